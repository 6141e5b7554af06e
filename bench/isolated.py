"""One function run in a fresh process, so that the peak memory measured is its own."""

import multiprocessing
import resource

import torch


def child(function, arguments, device, queue):
    """Run `function(*arguments)` here and put (its result, peak resident bytes, peak CUDA bytes) in the queue."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = function(*arguments)
    gpu_peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    queue.put((result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, gpu_peak))  # KiB on Linux


def measured(function, arguments, device):
    """(result, peak resident bytes, peak CUDA bytes or None) of `function(*arguments)` in its own process.
    A child that fails stops the bench with its exit status (a pool would wait for it forever)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(function, arguments, device, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"{function.__module__}.{function.__name__} failed (exit {process.exitcode})")
    return queue.get()

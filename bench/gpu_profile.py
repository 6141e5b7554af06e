"""Where a GPU spends one call's time: kernel time by kind, from torch.profiler (for the benches).

print_gpu_profile("B32 ours fp16", model.encode_image, images)
"""

import torch

KERNEL_KINDS = (  # (kind, substrings of a CUDA kernel's lowered name); the first match wins
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("matrix products", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "conv", "wgmma")),
    ("LayerNorm", ("layer_norm", "layernorm")),
    ("copies and casts", ("copy", "cat", "transpose", "permute", "index")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(mark in lowered for mark in marks)), "other element-wise")


def print_gpu_profile(title: str, function, *arguments, calls: int = 3) -> None:
    """Print the GPU milliseconds per call of `function(*arguments)` by kernel kind, and the
    costliest kernels (after one call outside the profile, so no first-call setup is counted)."""
    function(*arguments)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            function(*arguments)
        torch.cuda.synchronize()
    kernels = [event for event in prof.key_averages() if event.device_type == torch.autograd.DeviceType.CUDA]
    by_kind = {}
    for kernel in kernels:
        kind = kernel_kind(kernel.key)
        by_kind[kind] = by_kind.get(kind, 0) + kernel.device_time_total / 1000 / calls
    total = sum(by_kind.values())
    print(f"\nprofile, {title}: {total:.2f} ms of GPU time per call")
    print("| kernel kind | ms per call | share |")
    print("|---|---|---|")
    for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {ms:.2f} | {ms / total:.0%} |")
    for kernel in sorted(kernels, key=lambda event: -event.device_time_total)[:8]:
        per_call = kernel.device_time_total / 1000 / calls
        print(f"  {per_call:7.2f} ms  {kernel.count // calls:4d}x  {kernel.key[:110]}", flush=True)

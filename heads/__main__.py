"""What run_all.sh asks of the heads, so that the shell names none; one line per fact, tab-separated:

$ python -m heads
default     seqTransf tightTransf mlpScore        the heads run_all.sh trains unless --heads names others
zero-shot   meanP                                 the parameter-free heads, each evaluated without training
demo        seqTransf   --frames 8 --epochs 60 ...   a head's settings in the built-in demo, as flags
                                                  (frames only for a zero-shot head: evaluate.py's)
"""

from heads.architectures import DEFAULT_HEADS, HEADS, ZERO_SHOT_HEADS


def lines() -> list[str]:
    facts = [f"default\t{' '.join(DEFAULT_HEADS)}", f"zero-shot\t{' '.join(ZERO_SHOT_HEADS)}"]
    for name, head in HEADS.items():
        if head.demo is not None:
            flags = head.demo.train_args()[:2] if head.parameter_free else head.demo.train_args()
            facts.append(f"demo\t{name}\t{' '.join(flags)}")
    return facts


if __name__ == "__main__":
    print("\n".join(lines()))

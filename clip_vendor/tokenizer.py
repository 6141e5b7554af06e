"""OpenAI CLIP's byte-level BPE tokenizer, and `tokenize` to a fixed-length id tensor.

The merges file is not in git: `python -m clip_vendor.fetch_vocab` (run by setup_env.sh) takes it
from a pinned PyPI release and checks its sha256. Nothing is downloaded at run time.
"""

import gzip
import html
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch

VOCAB_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
N_MERGES = 48894  # 49408 ids = 256 bytes + 256 end-of-word bytes + merges + 2 specials
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"

# Word pieces: the special tokens, English contractions, letter runs, single digits, and runs of
# everything else that is not white space. IGNORECASE makes the contractions match "'S" too.
WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def byte_to_unicode() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable characters, so BPE works on str.

    Printable Latin-1 bytes map to themselves; the rest are moved to code points from 256 up.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def clean_text(text: str) -> str:
    """ftfy, HTML unescaped twice (captions are often double-escaped), white space collapsed, lowercased."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def reads_as_blank(text: str) -> bool:
    """True when `clean_text` leaves nothing of `text`: white space, or entities such as `&nbsp;`
    that unescape to it. Such a caption would be embedded as an empty query."""
    if text.isascii() and "&" not in text:  # cleaning can only fold white space here: skip ftfy's cost
        return not text.strip()
    return not clean_text(text)


class BpeTokenizer:
    def __init__(self, vocab_path=VOCAB_PATH):
        merges = read_merges(vocab_path)
        self.byte_encoder = byte_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
        vocab += [START_OF_TEXT, END_OF_TEXT]
        self.encoder = {piece: i for i, piece in enumerate(vocab)}
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_id = self.encoder[START_OF_TEXT]
        self.eot_id = self.encoder[END_OF_TEXT]
        self.word_cache = {START_OF_TEXT: [self.sot_id], END_OF_TEXT: [self.eot_id]}

    def encode(self, text: str) -> list[int]:
        """Text -> BPE ids, without start/end tokens."""
        ids = []
        for word in WORD_PATTERN.findall(clean_text(text)):
            if word not in self.word_cache:
                symbols = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
                self.word_cache[word] = [self.encoder[piece] for piece in self.bpe(symbols)]
            ids.extend(self.word_cache[word])
        return ids

    def bpe(self, symbols):
        """Merge adjacent pieces of one word, lowest-ranked pair first, until no known pair is left."""
        pieces = list(symbols[:-1]) + [symbols[-1] + "</w>"]
        while len(pieces) > 1:
            pairs = set(zip(pieces, pieces[1:], strict=False))
            best = min(pairs, key=lambda pair: self.merge_rank.get(pair, float("inf")))
            if best not in self.merge_rank:
                break
            merged, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                    merged.append(pieces[i] + pieces[i + 1])
                    i += 2
                else:
                    merged.append(pieces[i])
                    i += 1
            pieces = merged
        return pieces


def read_merges(vocab_path: Path) -> list[tuple[str, str]]:
    vocab_path = Path(vocab_path)
    if not vocab_path.exists():
        raise FileNotFoundError(
            f"CLIP BPE vocabulary not found at {vocab_path}. Run `bash setup_env.sh` "
            "(or `python -m clip_vendor.fetch_vocab`) once to install it from PyPI."
        )
    lines = gzip.decompress(vocab_path.read_bytes()).decode("utf-8").split("\n")
    # line 0 is a version header; OpenAI uses exactly the first N_MERGES merges that follow
    return [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]


@lru_cache(maxsize=1)
def default_tokenizer() -> BpeTokenizer:
    return BpeTokenizer()


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = True) -> torch.Tensor:
    """Tokenize one string or a list of strings to a [len(texts), context_length] int64 tensor.

    texts: a caption or list of captions.
    context_length: positions per row; rows are zero-padded after the end-of-text token.
    truncate: cut over-long texts to fit, keeping the end-of-text token last (the text encoder
        pools there); if False, an over-long text raises ValueError.
    """
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = default_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tokenizer.sot_id, *tokenizer.encode(text), tokenizer.eot_id]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"text {row} is {len(ids)} tokens, over the context length {context_length}: {text!r}")
            ids = ids[: context_length - 1] + [tokenizer.eot_id]
        result[row, : len(ids)] = torch.tensor(ids)
    return result


def token_lengths(texts: list[str]) -> list[int]:
    """Tokens of each text with its start and end tokens, before any truncation: a text longer than
    the context length is cut by `tokenize`, and this says by how much."""
    tokenizer = default_tokenizer()
    return [len(tokenizer.encode(text)) + 2 for text in texts]


def tokenize_windows(text: str, context_length: int = 77) -> torch.Tensor:
    """One text as consecutive windows of at most context_length - 2 tokens, each wrapped in the
    start and end-of-text tokens: [n_windows, context_length]. A text that fits is one window,
    the same row `tokenize` gives."""
    tokenizer = default_tokenizer()
    ids = tokenizer.encode(text)
    step = context_length - 2
    windows = [ids[start : start + step] for start in range(0, max(len(ids), 1), step)]
    result = torch.zeros(len(windows), context_length, dtype=torch.long)
    for row, window in enumerate(windows):
        result[row, : len(window) + 2] = torch.tensor([tokenizer.sot_id, *window, tokenizer.eot_id])
    return result

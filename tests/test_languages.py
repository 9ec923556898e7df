"""Many languages: round trips through WordPiece and byte-level BPE, decoding of scripts written without
spaces, their words for whole-word masking, and the tokenizer trainer's held-out coverage report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from masklm.data.masking import mask_tokens
from masklm.tokenizer import Tokenizer, heldout_coverage, train_tokenizer, unspaced_chars, word_starts

SAMPLES = {
    "german": "Größere Straßen führen über die Brücke nach Köln.",
    "chinese": "北京是中国的首都。",
    "japanese": "東京へ行きます。",
    "arabic": "مرحبا بالعالم، كيف حالك؟",
    "hindi": "नमस्ते दुनिया, आप कैसे हैं?",
    "thai": "สวัสดีครับ ผมชื่อสมชาย",
    "emoji": "emoji 😀👍🏽 🇳🇴 and a family 👨\u200d👩\u200d👧",
}
CORPUS = [text for text in SAMPLES.values() for _ in range(4)]


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def multilingual(request) -> Tokenizer:
    return train_tokenizer(CORPUS, kind=request.param, vocab_size=400 if request.param == "bpe" else 300,
                           min_frequency=1)


@pytest.mark.parametrize("language", list(SAMPLES))
def test_round_trip_is_the_normal_form(multilingual, language):
    text = SAMPLES[language]
    ids = multilingual.encode(text).ids
    assert multilingual.unk_id not in ids
    assert multilingual.decode(ids) == multilingual.normal_form(text)
    assert multilingual.decode_batch([ids, ids]) == [multilingual.normal_form(text)] * 2
    if multilingual.kind == "bpe":
        assert multilingual.normal_form(text) == text  # no normalizer: exact


def test_wordpiece_normal_form_is_the_normalizer(multilingual):
    """What WordPiece gives back, spelled out: text without control characters (the ZWJ of emoji
    sequences), accents and case kept, CJK joined, punctuation split off by the pre-tokenizer."""
    if multilingual.kind != "wordpiece":
        pytest.skip("byte-level BPE has no normalizer")
    expected = dict(SAMPLES, arabic="مرحبا بالعالم ، كيف حالك ؟")  # the decoder re-attaches only ASCII , . ? !
    for language in ("german", "chinese", "japanese", "arabic", "hindi", "thai"):
        assert multilingual.decode(multilingual.encode(SAMPLES[language]).ids) == expected[language], language
    assert multilingual.normal_form("a family 👨\u200d👩\u200d👧") == "a family 👨👩👧"


def test_cjk_decodes_without_spaces(multilingual):
    for text in ("北京是中国的首都。", "東京へ行きます。"):
        decoded = multilingual.decode(multilingual.encode(text).ids)
        assert decoded == text  # not "北 京 是 中 国 的 首 都 。"
    # The spaces WordPiece keeps: between words of spaced scripts, and in Thai, whose spaces are written.
    assert multilingual.decode(multilingual.encode("สวัสดีครับ ผม").ids) == "สวัสดีครับ ผม"


def test_unspaced_chars():
    flags = unspaced_chars("ab 北京 สวัส 한국 ひら")
    assert "".join(c for c, f in zip("ab 北京 สวัส 한국 ひら", flags) if f) == "北京สวัสひら"


def _words(text: str, tok: Tokenizer) -> list[str]:
    enc = tok.encode(text)
    starts = word_starts(enc, text)
    words: list[list[int]] = []
    for i, special in enumerate(enc.special_tokens_mask):
        if special:
            continue
        if starts[i] or not words:
            words.append([i])
        else:
            words[-1].append(i)
    return [text[enc.offsets[w[0]][0]:enc.offsets[w[-1]][1]] for w in words]


def test_whole_words_in_unspaced_scripts(multilingual):
    if multilingual.kind == "wordpiece":  # WordPiece isolates every ideograph: one word each
        assert _words("北京是中国的首都。", multilingual) == list("北京是中国的首都。")
        assert _words("我爱NLP模型", multilingual)[-2:] == ["模", "型"]
    else:  # byte-level BPE: a token spanning several characters is one word (the tokenizer marked it)
        words = _words("北京是中国的首都。", multilingual)
        assert "".join(words) == "北京是中国的首都。" and len(words) >= 4  # before: one word, the sentence
    # Thai: a vowel sign or tone mark (a combining mark) never starts a word.
    for word in _words("สวัสดีครับ", multilingual):
        assert word and word[0] not in "\u0e31\u0e34\u0e35\u0e36\u0e37\u0e38\u0e39\u0e47\u0e48\u0e49\u0e4a\u0e4b"
    # Spaced scripts keep one word per space-separated word.
    assert _words("Größere Straßen", multilingual) == ["Größere", "Straßen"]
    assert _words("नमस्ते दुनिया", multilingual) == ["नमस्ते", "दुनिया"]


def test_whole_word_masking_masks_characters_not_sentences():
    """Whole-word masking of a Chinese row: about the mask rate of its characters, never all or none
    (before, a sentence without spaces was one word)."""
    tok = train_tokenizer(CORPUS, kind="wordpiece", vocab_size=300, min_frequency=1)
    text = "北京是中国的首都。" * 3
    enc = tok.encode(text)
    ids = torch.tensor([enc.ids] * 8)
    starts = torch.from_numpy(np.stack([word_starts(enc, text)] * 8))
    _, labels = mask_tokens(ids, rows=list(range(8)), seed=0, epoch=0, rate=0.3, mask_id=tok.mask_id,
                            vocab_size=tok.vocab_size, special_ids=tok.special_ids, word_starts=starts,
                            strategy="whole-word")
    chosen = (labels != -100).sum(1)
    maskable = len(enc.ids) - 2
    assert chosen.float().mean().item() == pytest.approx(0.3 * maskable, abs=2.0)
    assert int(chosen.min()) > 0 and int(chosen.max()) < maskable


def test_heldout_coverage_counts():
    tok = train_tokenizer(["ab ab ba", "ba ab"] * 3, kind="wordpiece", vocab_size=30, min_frequency=1)
    report = heldout_coverage(tok, ["ab Ω ab"], seen=set("ab ba"))
    assert report["chars"] == 5 and report["chars_seen"] == pytest.approx(4 / 5)
    assert report["chars_in_vocab"] == pytest.approx(4 / 5) and report["unknown_char_rate"] == pytest.approx(1 / 5)
    assert report["unknown_token_rate"] == pytest.approx(1 / report["tokens"])
    bpe = train_tokenizer(["ab ab ba", "ba ab"] * 3, kind="bpe", vocab_size=270, min_frequency=1)
    report = heldout_coverage(bpe, ["ab Ω ab"], seen=set("ab ba"))
    assert report["chars_in_vocab"] == 1.0 and report["unknown_token_rate"] == 0.0 and report["chars_seen"] < 1


def test_cli_train_reports_heldout_coverage(cli, capsys, tmp_path):
    docs = [f"alpha beta gamma {i % 7}" for i in range(200)]
    docs[99] = "alpha Ж beta"  # held out by the default (every 100th document): Ж never reaches training
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(docs), encoding="utf-8")
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(tmp_path / "t"), "--vocab-size", "60",
                "--min-frequency", "1", "--json"]) == 0
    captured = capsys.readouterr()
    held = json.loads(captured.out)["heldout"]
    assert held["documents"] == 2 and held["chars"] == len("alphaЖbeta") + len("alphabetagamma3")
    assert held["chars_seen"] == pytest.approx(1 - 1 / held["chars"])
    assert held["unknown_token_rate"] > 0 and "held-out coverage on 2 held-out documents" in captured.err
    assert Tokenizer.load(tmp_path / "t").token_to_id("Ж") is None
    heldout = tmp_path / "h.txt"
    heldout.write_text("北京 alpha", encoding="utf-8")
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(tmp_path / "t2"), "--kind", "bpe",
                "--vocab-size", "300", "--heldout", str(heldout), "--json"]) == 0
    held = json.loads(capsys.readouterr().out)["heldout"]
    assert held["documents"] == 1 and held["chars_seen"] == pytest.approx(5 / 7)
    assert held["chars_in_vocab"] == 1.0 and held["unknown_token_rate"] == 0.0

"""Token windows: the course protocol, disjointness, BOS, errors."""
import pytest
import torch

from course_lib.core import data, models


@pytest.fixture(scope="module")
def byte_tok():
    return models.byte_tokenizer()


def test_pydoc_text_is_long_english_prose():
    text = data.load_text("pydoc")
    assert len(text) > 400_000
    assert "The" in text and "\n\n" in text


def test_windows_follow_the_protocol_and_never_overlap(byte_tok):
    text = data.load_text("pydoc")
    w = data.make_windows(byte_tok, text, seq_len=64, n_eval=5, n_calib=7)
    ids = byte_tok(text, add_special_tokens=False).input_ids
    assert w.eval.shape == (5, 64) and w.calib.shape == (7, 64)
    assert w.calib_spans[0][0] == 0  # calibration from the start
    assert w.eval_spans[0][0] == len(ids) // 2  # evaluation from the middle
    calib_tokens = {t for a, b in w.calib_spans for t in range(a, b)}
    eval_tokens = {t for a, b in w.eval_spans for t in range(a, b)}
    assert not calib_tokens & eval_tokens
    for row, (a, b) in zip(w.eval, w.eval_spans):  # each window is the text at its span
        assert row.tolist() == ids[a:b]
    assert w.eval_tokens == 5 * 63


def test_bos_is_prepended_to_every_window(byte_tok):
    w = data.make_windows(byte_tok, data.load_text("pydoc"), seq_len=32, n_eval=3, n_calib=2,
                          add_bos=True)
    assert (w.eval[:, 0] == byte_tok.bos_token_id).all() and (w.calib[:, 0] == byte_tok.bos_token_id).all()
    assert (w.eval[:, 1:] != byte_tok.bos_token_id).all()


def test_gemma_gets_bos_and_smollm2_does_not():
    assert models.needs_bos("gemma3-270m") and not models.needs_bos("smollm2-135m")


def test_text_too_short_is_a_clear_error(byte_tok):
    with pytest.raises(ValueError, match="too short"):
        data.make_windows(byte_tok, "just a few words " * 10, seq_len=64, n_eval=4, n_calib=4)


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match="pydoc"):
        data.text_dataset("no-such-source")


def test_local_text_file_goes_through_the_same_path(tmp_path, byte_tok):
    path = tmp_path / "notes.txt"
    path.write_text("first line\nsecond line\n" * 200)
    text = data.load_text(str(path))
    assert "second line" in text
    w = data.make_windows(byte_tok, text, seq_len=16, n_eval=2, n_calib=2)
    assert w.eval.dtype == torch.long


def test_python_source_is_a_second_offline_text_of_another_kind(byte_tok):
    code = data.load_text("python-source")
    assert len(code) > 200_000 and "def " in code and "class " in code
    prose_windows = data.make_windows(byte_tok, data.load_text("pydoc"), seq_len=32, n_eval=1, n_calib=1)
    code_windows = data.make_windows(byte_tok, code, seq_len=32, n_eval=1, n_calib=1)
    assert not torch.equal(prose_windows.eval, code_windows.eval)


def test_calibration_draws_are_other_samples_of_the_first_half_and_the_same_everywhere(byte_tok):
    text = data.load_text("pydoc")
    ids = byte_tok(text, add_special_tokens=False).input_ids
    first = data.make_windows(byte_tok, text, seq_len=64, n_eval=4, n_calib=6)
    draws = [data.make_windows(byte_tok, text, seq_len=64, n_eval=4, n_calib=6, draw=k) for k in (1, 2)]
    assert first.calib_spans == tuple((i * 64, (i + 1) * 64) for i in range(6))  # draw 0: the protocol's
    eval_tokens = {t for a, b in first.eval_spans for t in range(a, b)}
    for w in draws:
        assert torch.equal(w.eval, first.eval)  # one evaluation set whatever the draw
        starts = [a for a, _ in w.calib_spans]
        assert starts == sorted(set(starts)) and all(a % 64 == 0 for a in starts)  # distinct slots
        assert not {t for a, b in w.calib_spans for t in range(a, b)} & eval_tokens
        assert max(b for _, b in w.calib_spans) <= len(ids) // 2
        for row, (a, b) in zip(w.calib, w.calib_spans):
            assert row.tolist() == ids[a:b]
    assert draws[0].calib_spans != draws[1].calib_spans != first.calib_spans
    again = data.make_windows(byte_tok, text, seq_len=64, n_eval=4, n_calib=6, draw=1)
    assert again.calib_spans == draws[0].calib_spans  # seeded: the same sample on every run


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_a_bad_draw_is_refused(byte_tok, bad):
    with pytest.raises(ValueError, match="draw"):
        data.make_windows(byte_tok, data.load_text("pydoc"), seq_len=64, n_eval=2, n_calib=2, draw=bad)


def test_training_code_never_contains_the_held_out_code(byte_tok):
    assert not set(data.TRAIN_MODULES) & set(data.SOURCE_MODULES)
    train = data.load_text("python-train")
    held = data.make_windows(byte_tok, data.load_text("python-source"), seq_len=256, n_eval=4, n_calib=0)
    for row in held.eval:
        assert byte_tok.decode(row[40:200]) not in train  # no held-out passage is trained on


def test_mixed_windows_alternate_prose_and_code(byte_tok):
    mixed = data.mixed_windows(byte_tok, "smollm2-135m", n_prose=3, n_code=2, seq_len=32)
    prose = data.windows_for(byte_tok, "smollm2-135m", seq_len=32, n_eval=1, n_calib=3).calib
    code = data.windows_for(byte_tok, "smollm2-135m", source="python-train", seq_len=32, n_eval=1,
                            n_calib=2).calib
    expected = torch.stack([prose[0], code[0], prose[1], code[1], prose[2]])
    assert torch.equal(mixed, expected)

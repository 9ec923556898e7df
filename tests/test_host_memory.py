"""host_memory.keep_freed_memory: freed blocks are reused from the heap instead of faulted in again."""

import subprocess
import sys
import textwrap

import pytest

# A training step's pattern: activations of several sizes kept for backward and freed at the end (in
# reverse), transient blocks in between. Minor page faults (pages the kernel had to hand out and zero) are
# counted over steps 3-8, after the first two have grown the heap to the step's peak.
CHILD = textwrap.dedent("""
    import resource, sys, torch
    from masklm.host_memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory() and keep_freed_memory()  # idempotent
    MiB = 1024 * 1024
    def step(i):
        kept = []
        for layer in range(4):
            kept.append(torch.empty(MiB // 4).fill_(1.0))  # 1 MiB
            transient = torch.empty(2 * MiB // 4).fill_(1.0)
            del transient
            kept.append(torch.empty(MiB // 4).fill_(1.0))
            kept.extend(torch.empty(25 * 1024).fill_(1.0) for _ in range(40))  # 40 x 100 KiB
        while kept:
            kept.pop()
    faults = 0
    for i in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(i)
        faults += (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) if i >= 2 else 0
    print(faults)
""")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_reuses_blocks_instead_of_faulting_them_in():
    touched = 6 * 4 * (1 + 2 + 1 + 3.9) * 1024 * 1024 // 4096  # pages written over the counted steps
    # Kept: every block comes back from the heap, already mapped (0-154 pages seen). With glibc's defaults
    # the same child faults 1,400-30,000 pages in most runs: freed memory goes back to the OS (not asserted,
    # as it varies with glibc's heuristics and the address layout).
    assert _faults("keep") < touched // 50


def test_only_a_cpu_device_changes_anything(monkeypatch):
    from masklm import host_memory

    monkeypatch.setattr(host_memory, "_kept", False)
    assert host_memory.keep_freed_memory("cuda") is False and host_memory.keep_freed_memory("cuda:1") is False
    assert host_memory._kept is False


def test_masklm_train_keeps_memory_on_its_device(monkeypatch, tmp_path, capsys):
    """The CLI as a user runs it asks for kept memory once, with the run's device."""
    from masklm.cli import main
    from masklm.training import trainer

    corpus = tmp_path / "toy.txt"
    corpus.write_text("".join(f"the cat {w} sat on the mat and then ran .\n\n" for w in "abcdefghij" * 4))
    config = tmp_path / "tiny.toml"
    config.write_text("[model]\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n"
                      "intermediate_size = 64\n")
    seen = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda device: seen.append(str(device)) or True)
    assert main(["train", "--config", str(config), "--corpus", str(corpus), "--out", str(tmp_path / "run"),
                 "--vocab-size", "120", "--seq-len", "16", "--batch-size", "2", "--max-steps", "2",
                 "--no-progress"]) == 0
    assert seen == ["cpu"]

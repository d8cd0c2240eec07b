"""`pyresa eval`: perplexity per mode and the NLL plot, on a short real text."""

from __future__ import annotations

import re
import subprocess
import sys


def test_eval_prints_perplexities_and_writes_a_png(tmp_path, english_text):
    text = tmp_path / "text.txt"
    text.write_text(english_text[:3000])
    png = tmp_path / "nll.png"
    r = subprocess.run([sys.executable, "-m", "pyresa", "eval", "--text", str(text), "--prefill", "200",
                        "--max-tokens", "320", "--threads", "1", "--min-blocks", "4", "--plot", str(png),
                        "--window", "16"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ppl = {m: float(v) for m, v in re.findall(r"^\s+(dense|sparse|resa)\s+perplexity\s+([\d.]+)", r.stdout, re.M)}
    assert set(ppl) == {"dense", "sparse", "resa"}
    assert all(1.0 < v < 1000 for v in ppl.values())
    assert "rectifications" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_rejects_a_text_shorter_than_the_prefill(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("Just a few words.")
    r = subprocess.run([sys.executable, "-m", "pyresa", "eval", "--text", str(text), "--prefill", "100"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "prefill" in r.stderr


def test_eval_audit_prints_the_attention_mass_kept(tmp_path, english_text):
    text = tmp_path / "text.txt"
    text.write_text(english_text[:3000])
    r = subprocess.run([sys.executable, "-m", "pyresa", "eval", "--text", str(text), "--prefill", "200",
                        "--max-tokens", "260", "--threads", "1", "--min-blocks", "4", "--plot", "",
                        "--modes", "sparse", "--audit", "--selection", "oracle"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = re.search(r"attention mass kept: selection ([\d.]+), oracle ([\d.]+)", r.stdout)
    assert m, r.stdout
    # With the oracle choosing the blocks, the selection keeps exactly the oracle's mass.
    assert m.group(1) == m.group(2) and 0.2 < float(m.group(1)) <= 1.0
    assert len(re.findall(r"L\d+\s+[\d.]+/[\d.]+", r.stdout)) == 30

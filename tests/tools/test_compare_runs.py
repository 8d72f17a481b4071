"""tools.gpu.compare_runs: two kernel-benchmark CSVs side by side (times, ratios, speed-ups vs peers,
each run's bar verdicts)."""
import pytest

from tools.gpu import compare_runs
from tools.gpu.bars import Bar

HEADER = "op,shape,batch,dim,L,N,groups,mode,dtype,provider,ms,note\n"


def _csv(path, rows):
    path.write_text("# device: test\n" + HEADER
                    + "".join(f"{op},{shape},1,8,16,4,1,{mode},float32,{prov},{ms},\n"
                              for op, shape, mode, prov, ms in rows))
    return str(path)


def test_compare_reports_time_ratio_and_speedups_in_each_run(tmp_path):
    old = _csv(tmp_path / "old.csv", [("selective_scan", "a", "fwd", "cuda", 2.0),
                                      ("selective_scan", "a", "fwd", "mamba_ssm", 3.0),
                                      ("selective_scan", "gone", "fwd", "cuda", 1.0)])
    new = _csv(tmp_path / "new.csv", [("selective_scan", "a", "fwd", "cuda", 1.0),
                                      ("selective_scan", "a", "fwd", "mamba_ssm", 3.3),
                                      ("selective_scan", "added", "fwd", "cuda", 1.0)])
    bar = Bar("a", "selective_scan", ("a",), ("fwd",), ("float32",), "mamba_ssm", 2.0)
    text = compare_runs.compare(old, new, bars=[bar])
    row = next(line for line in text.splitlines() if line.startswith("selective_scan  a "))
    assert "2" in row and "0.50" in row and "1.50x -> 3.30x" in row, text
    assert "timed only in the old run: selective_scan/gone/fwd/float32" in text
    assert "timed only in the new run: selective_scan/added/fwd/float32" in text
    old_v, new_v = text.split("old verdicts:")[1].split("new verdicts:")
    assert old_v.strip().startswith("(a) FAIL: selective_scan fwd cuda vs mamba_ssm >= 2.00x | min 1.50x")
    assert new_v.strip().startswith("(a) PASS: selective_scan fwd cuda vs mamba_ssm >= 2.00x | min 3.30x")


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_runs.main([str(tmp_path / "nope.csv"), str(tmp_path / "nope2.csv")])
    assert "cannot read" in capsys.readouterr().err

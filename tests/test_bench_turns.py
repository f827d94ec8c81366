"""bench/gpu_suite.py's group: members compile side by side, then each times alone, after the config checks."""

import importlib.util
import json
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
spec = importlib.util.spec_from_file_location("gpu_suite", BENCH / "gpu_suite.py")
gpu_suite = sys.modules["gpu_suite"] = importlib.util.module_from_spec(spec)  # a dataclass finds its module
spec.loader.exec_module(gpu_suite)
Member, run_group = gpu_suite.Member, gpu_suite.run_group

MEMBER = """
import json, sys, time
began = time.time()
from turns import my_turn  # bench/turns.py, on PYTHONPATH
time.sleep(float(sys.argv[2]))  # compiling
if sys.argv[3] == "fail":
    sys.exit(3)
ready = time.time()
with my_turn() as turn:
    start = time.time()
    time.sleep(0.3)  # the timed steps
    row = {"began": began, "ready": ready, "start": start, "end": time.time(), "alone": turn["alone"]}
    print("ROW " + json.dumps(row))
"""


@pytest.fixture(autouse=True)
def members_import_turns(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(BENCH))


def test_members_time_one_at_a_time_after_all_are_warm_and_the_checks_are_done(tmp_path):
    def member(name, compile_s, how="ok"):
        return Member(name, [sys.executable, "-c", MEMBER, str(BENCH), str(compile_s), how], 10, 1)

    members = [member("a", 0.2), member("b", 1.5), member("fails", 0.1, "fail"), member("c", 0.5)]
    check = [sys.executable, "-c", "import time; time.sleep(2.5); print('checked', time.time())"]
    args = Namespace(
        out=tmp_path, tiny=False, memory_budget_gib=35, check_timeout=60, group_wait=60, step_timeout=60, dpo_model=None
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    steps = run_group(members, [("check", check)], args, logs)

    status = {s["step"]: s["status"] for s in steps}
    assert status == {"a": 0, "b": 0, "c": 0, "fails": 3, "check": 0}
    rows = {}
    for name in "abc":
        line = next(x for x in (logs / f"{name}.log").read_text().splitlines() if x.startswith("ROW "))
        rows[name] = json.loads(line[4:])
    checked = float((logs / "check.log").read_text().split()[-1])
    last_ready = max(r["ready"] for r in rows.values())
    spans = sorted((r["start"], r["end"]) for r in rows.values())
    assert all(r["alone"] for r in rows.values())
    assert spans[0][0] >= max(last_ready, checked)  # nobody times before every member is warm and the checks end
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))  # in turn
    # device memory: 35 GiB for the check (15) and members of 10 while warming, 1 once warm and waiting. a and b
    # start at once; "fails" once a and b are warm; c once "fails" has gone
    assert rows["c"]["began"] >= rows["b"]["ready"]


def test_a_member_still_compiling_after_the_group_wait_is_stopped_and_the_rest_time(tmp_path):
    members = [
        Member("quick", [sys.executable, "-c", MEMBER, str(BENCH), "0.1", "ok"], 0, 0),
        Member("slow", [sys.executable, "-c", MEMBER, str(BENCH), "60", "ok"], 0, 0),
    ]
    args = Namespace(
        out=tmp_path, tiny=True, memory_budget_gib=1, check_timeout=60, group_wait=3, step_timeout=60, dpo_model=None
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.time()
    steps = run_group(members, [], args, logs)
    assert time.time() - started < 30
    status = {s["step"]: s["status"] for s in steps}
    assert status["quick"] == 0 and status["slow"] != 0
    assert "ROW " in (logs / "quick.log").read_text()
    assert all(m.proc.poll() is not None for m in members)  # nothing of the group is left running

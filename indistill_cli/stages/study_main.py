"""What `indistill study` does, in order: write (or check) the protocol, run what is not finished yet phase by
phase (reference models and the gap check, the keep-flow pilot, the arms), then report. Each phase starts only
when the one before has finished, because its runs depend on what that phase decided."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indistill_cli import progress
from indistill_cli.errors import BadInput, IndistillError, RunFailure
from indistill_cli.stages.study import StudySpec, arm_jobs, choose_keep, gap_ok, pilot_jobs, reference_jobs
from indistill_cli.stages.study_protocol import ensure
from indistill_cli.stages.study_report import report
from indistill_cli.stages.study_runs import Board, Execution, backend, execute, finished


def _all_jobs(spec: StudySpec) -> list[Any]:
    return reference_jobs(spec) + pilot_jobs(spec) + arm_jobs(spec, (0.0, 1.0))


def _check_folder(out: Path) -> None:
    """A folder whose results.json holds runs that runs/ does not (a committed copy, without its checkpoints)
    cannot be continued here."""
    res = out / "results.json"
    if res.exists() and not (out / "runs").is_dir() and json.loads(res.read_text()).get("runs"):
        raise BadInput(f"{out}: holds a finished report but not its runs/ and work/ (a committed copy?): continue the "
                       f"study where its runs are, or --report to rebuild the report from results.json")


def run_phases(spec: StudySpec, out: Path, ex: Execution, accept_gap: bool) -> None:
    """The runs not finished yet: reference models, the gap check, the pilot, the arms."""
    from indistill_cli.stages.study_runs import runs_done

    board = Board(spec, _all_jobs(spec), runs_done(out))
    with board.bar, backend(ex, out) as runner:
        try:
            done = execute(spec, out, reference_jobs(spec), runner, board)
            if spec.gap_points > 0:
                ok, text = gap_ok(spec, done["gap"]["val_map"])
                progress.info(f"gap check: {text}: {'passed' if ok else 'FAILED'}")
                if not ok and spec.gap_required and not accept_gap:
                    raise RunFailure(f"the gap check failed ({text}); protocol.md says what to do next (then "
                                     "--accept-gap)")
            done = execute(spec, out, pilot_jobs(spec), runner, board)
            execute(spec, out, arm_jobs(spec, choose_keep(spec, done)), runner, board)
        except IndistillError:
            raise
        except Exception as e:  # noqa: BLE001 - a run's own failure, as one line naming it
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RunFailure(f"a study run failed: {type(e).__name__}: {first} (finished runs are kept; rerun the same "
                             "command to continue)") from e


def run_study(spec: StudySpec, out: Path, ex: Execution, mode: str = "run", accept_gap: bool = False,
              command: str = "") -> dict[str, Any]:
    """mode: run (protocol, runs, report), protocol (write or check the protocol and stop), report (only the
    report, from the finished runs)."""
    spec.check()
    if mode == "run":
        _check_folder(out)
    sha, written = ensure(spec, out)
    note = "; commit them before the first run" if written and mode == "protocol" else ""
    progress.info(f"{'wrote' if written else 'protocol matches'}: {out / 'protocol.md'}, {out / 'protocol.json'} "
                  f"(sha256 {sha[:16]}){note}")
    summary: dict[str, Any] = {"out": str(out), "protocol_sha256": sha, "protocol_written": written}
    if mode == "protocol":
        return summary
    if mode == "run":
        ex.protocol = sha
        run_phases(spec, out, ex, accept_gap)
    runs = finished(out)
    result = report(spec, out, runs, command, sha)
    verdicts = [f"{r['a']} - {r['b']} ({r['view']}), {k}: {r[k]['verdict']}"
                for r in result["summary"]["comparisons"]["primary"] if r["primary"] for k in spec.primary_endpoints
                if k in r]
    for v in verdicts:
        progress.info(v)
    progress.info(f"wrote {out / 'results.md'}, results.json, figure.png")
    return {**summary, "runs": len(runs), "complete_seeds": result["summary"]["complete_seeds"],
            "primary": verdicts, "results": str(out / "results.json")}

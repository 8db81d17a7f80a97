"""Mutation check of the test suite: does each deliberate semantic defect make a test fail?

Run by hand (pytest does not collect this file: its name does not start with `test_`):

  python tests/mutation_check.py                 # every mutant, a table at the end
  python tests/mutation_check.py --only l2_scale_then_clip,pgd_last_iterate
  python tests/mutation_check.py --json mutants.json --baseline
  python tests/mutation_check.py --list

Each mutant is a list of exact text substitutions in one file of a temporary copy of the
repository (tracked and untracked, non-ignored files). A substitution whose text is not
found exactly once marks the mutant STALE: the code moved on and the mutant must be updated,
which counts as a failure so that drift is visible. The mutant's relevant test files then
run with pytest (`-x`, in sequence: one mutant at a time); the mutant is killed when pytest
reports a failure or error. `--baseline` first runs every selection on the unmutated copy,
which must pass. `--json PATH` writes {"mutants": N, "killed": K, "survivors": [...]} (STALE
mutants are survivors).

A persistent XLA compilation cache is shared by the runs (unchanged programs are not
recompiled; a cache hit is the same executable, so results do not depend on it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

__test__ = False  # never collected by pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
  """One semantic defect: `subs` are (old, new) exact substitutions in `path`; `tests` are
  pytest arguments (files, node ids, or `-k` expressions)."""
  name: str
  path: str
  subs: tuple[tuple[str, str], ...]
  tests: tuple[str, ...]
  why: str


def _m(name, path, subs, tests, why):
  return Mutant(name, path, tuple(subs), tuple(tests), why)


ATT, THE, TRN, REL = ("spurjax/attacks.py", "spurjax/theory.py", "spurjax/train.py",
                      "spurjax/reliance.py")
T_PROJ, T_ATT = "tests/test_projections.py", "tests/test_attacks.py"
T_PATHS = "tests/test_untested_paths.py"
GAU, T_GAU = "spurjax/gaussian.py", "tests/test_gaussian.py"

MUTANTS = [
    # --- the nine defects no test caught before -------------------------------------------
    _m("l2_scale_then_clip", ATT,
       [("  s = jnp.where(inside, one, s_feasible)\n  return jnp.clip(s * delta, lo, hi)",
         "  del s_feasible\n  n = _l2_norm(delta)\n"
         "  s = jnp.minimum(1.0, eps / jnp.where(n > 0, n, 1.0))\n"
         "  return jnp.clip(s * delta, lo, hi)")],
       [T_PROJ, "-k", "l2 or qp"], "l2 projection: scale to the ball, then clip"),
    _m("l1_duchi_then_clip", ATT,
       [("  room = jnp.where(delta > 0, 1.0 - x, x)\n",
         "  room = jnp.full_like(delta, jnp.inf)\n"),
        ("  return (jnp.sign(delta) * jnp.clip(a - theta, 0.0, room)).reshape(shape)",
         "  return jnp.clip(jnp.sign(delta) * jnp.clip(a - theta, 0.0, room), -x, 1.0 - x"
         ").reshape(shape)")],
       [T_PROJ, "-k", "l1 or qp"], "l1 projection: Duchi without box caps, then clip"),
    _m("pgd_last_iterate", ATT,
       [("  best_x, _ = keep_best(best_x, best_loss, x_last, loss_fn(x_last, y))\n"
         "  return jax.lax.stop_gradient(best_x)",
         "  return jax.lax.stop_gradient(x_last)")],
       [T_PROJ, "-k", "best_iterate"], "pgd returns the last iterate, not the best"),
    _m("rfs_mean_of_per_sigma", REL,
       [('  out[prefix] = rfs_score(out[f"{prefix}_a_fg"], out[f"{prefix}_a_bg"])',
         "  out[prefix] = float(np.mean([rfs_score(f, b) for f, b in zip(a_fg, a_bg)]))")],
       ["tests/test_reliance_scoring.py"], "summary RFS as the mean of per-sigma RFS"),
    _m("rfs_plain_accuracy", REL,
       [("    a_fg.append(c_fg.balanced())\n    a_bg.append(c_bg.balanced())",
         "    a_fg.append(c_fg.plain())\n    a_bg.append(c_bg.plain())")],
       ["tests/test_reliance_scoring.py"], "RFS from plain instead of balanced accuracy"),
    _m("salient_plain_accuracy", REL,
       [('{"core_acc": c_core.balanced(), "spur_acc": c_spur.balanced()}',
         '{"core_acc": c_core.plain(), "spur_acc": c_spur.plain()}')],
       ["tests/test_reliance_scoring.py"], "Salient from plain instead of balanced accuracy"),
    _m("theory_static_dims", THE,
       [('@functools.partial(jax.jit, static_argnames=("norm", "has_spu"))\n'
         "def _minimize_reduced(red: _Reduced, eps: jax.Array, norm: str,\n"
         "                      has_spu: bool)",
         '@functools.partial(jax.jit, static_argnames=("norm", "has_spu", "dims"))\n'
         "def _minimize_reduced(red: _Reduced, eps: jax.Array, norm: str,\n"
         "                      has_spu: bool, dims=None)"),
        ("norm=norm,\n                                 has_spu=model.d_spu > 0)",
         "norm=norm,\n                                 has_spu=model.d_spu > 0,"
         " dims=(model.d_core, model.d_spu))")],
       ["tests/test_compiles_once.py", "-k", "theory"],
       "the theory kernel compiles once per dimension pair"),
    _m("risk_stop_gradient", THE,
       [("  s = _safe_sqrt(_residual_sq(model, w))\n  n = norms.dual_norm(w, norm)",
         "  s = jax.lax.stop_gradient(_safe_sqrt(_residual_sq(model, w)))\n"
         "  n = norms.dual_norm(w, norm)")],
       ["tests/test_gradients.py"], "no gradient through the residual in adversarial_risk"),
    _m("eval_counts_padding", "spurjax/evaluation.py",
       [("  return jnp.sum(jnp.where(valid, hit, False))", "  return jnp.sum(hit)")],
       [T_PATHS, "-k", "padded"], "evaluate_accuracy counts the zero-padded rows"),
    _m("random_start_ignored", ATT,
       [("  if random_start:\n    delta = ops.project(ops.init(key, x, eps), x, eps)",
         "  if False:\n    delta = ops.project(ops.init(key, x, eps), x, eps)")],
       [T_PROJ, "-k", "random_start"], "the default random start is never drawn"),
    # --- kinds the suite caught before: kept so that it keeps catching them ---------------
    _m("theory_bisection_steps", THE,
       [("_BISECTION_STEPS = 64", "_BISECTION_STEPS = 24")],
       ["tests/test_theory.py"], "too few bisection steps in the exact solver"),
    _m("theory_newton_steps", THE,
       [("_NEWTON_STEPS = 8", "_NEWTON_STEPS = 3")],
       ["tests/test_theory.py"], "too few Newton steps in the l1 / l_inf line searches"),
    # --- general Gaussian models -----------------------------------------------------------
    _m("gaussian_batched_lapack", GAU,
       [("_cholesky = _one_at_a_time(jnp.linalg.cholesky)", "_cholesky = jnp.linalg.cholesky")],
       [T_GAU, "-k", "lapack"], "a factorization batched under vmap (the CPU runtime hang)"),
    _m("gaussian_piece_search_short", GAU,
       [("  steps = int(np.ceil(np.log2(n + 1)))\n", "  steps = int(np.ceil(np.log2(n + 1))) - 2\n")],
       [T_GAU], "the binary search over recorded pieces stops early (wrong piece)"),
    _m("attack_bisection_steps", ATT,
       [("_BISECT_ITERS = 32", "_BISECT_ITERS = 10")],
       [T_PROJ], "too few bisection steps in the l1 / l2 projections"),
    _m("linf_threshold_comparison", THE,
       [("out = jnp.where(jnp.abs(t_star) <= 1.0, K * s_c / math.sqrt(d_c),",
         "out = jnp.where(jnp.abs(t_star) > 1.0, K * s_c / math.sqrt(d_c),")],
       ["tests/test_theory.py"], "l_inf interpolation radius: branch condition flipped"),
    _m("l2_threshold_formula", THE,
       [("eps2 = K * s_c * jnp.sqrt((1.0 - r**2) / (1.0 + r**2 * (d_s - 1)))",
         "eps2 = K * s_c * jnp.sqrt((1.0 - r**2) / (1.0 + r**2 * d_s))")],
       ["tests/test_theory.py"], "l2 interpolation radius: d_s instead of d_s - 1"),
    _m("resume_optimizer_state", TRN,
       [("    state = checkpoints.restore(mngr, state, start, sharding=repl)\n",
         "    state = dict(checkpoints.restore(mngr, state, start, sharding=repl),\n"
         "                 opt_state=state[\"opt_state\"])\n")],
       ["tests/test_train.py", "-k", "resume"], "resume restarts the optimizer state"),
    _m("resume_attack_key", TRN,
       [("jax.random.fold_in(attack_key, s))", "jax.random.fold_in(attack_key, s - start))")],
       ["tests/test_train.py", "-k", "resume"], "resume restarts the attack keys"),
    _m("no_inward_rounding", ATT,
       [("  s = jnp.where(s == x, s, jnp.nextafter(s, x))\n", "")],
       [T_ATT, "-k", "in_ball"], "x + delta not rounded towards x"),
    _m("l1_step_ignores_box", ATT,
       [("  room = jnp.where(g2 > 0, 1.0 - x2, jnp.where(g2 < 0, x2, 0.0))",
         "  room = jnp.where(g2 != 0, 1.0, 0.0)")],
       [T_ATT, "-k", "linear_worst_case"], "l1 step spends budget on saturated pixels"),
    _m("theory_ties_replace_exact_zeros", THE,
       [("    better = val < best - rtol * jnp.abs(best) - atol",
         "    better = val <= best")],
       ["tests/test_theory.py"], "round-off ties replace the exact structured candidates"),
    # --- paths that no test ran before ----------------------------------------------------
    _m("jsonl_torn_line_raises", "spurjax/io.py",
       [("      if i == len(lines) - 1:\n        break\n      raise", "      raise")],
       [T_PATHS, "-k", "jsonl"], "a torn last metrics line makes resume fail"),
    _m("process_id_off_by_one", "spurjax/parallel.py",
       [("if not 0 <= process_id < num_processes:",
         "if not 0 <= process_id <= num_processes:")],
       [T_PATHS, "-k", "distributed"], "process_id == num_processes accepted"),
    _m("piecewise_ignores_warmup", TRN,
       [("{int(0.5 * rest): 0.1, int(0.75 * rest): 0.1}",
         "{int(0.5 * total): 0.1, int(0.75 * total): 0.1}")],
       [T_PATHS, "-k", "piecewise"], "piecewise decay points counted from step 0"),
    _m("warmup_starts_high", TRN,
       [("optax.linear_schedule(0.0, peak, warm)",
         "optax.linear_schedule(0.1 * peak, peak, warm)")],
       [T_PATHS, "-k", "piecewise"], "warm-up does not start from 0"),
    _m("decay_after_adam", TRN,
       [("optax.chain(optax.add_decayed_weights(config.weight_decay), opt)",
         "optax.chain(opt, optax.add_decayed_weights(config.weight_decay))")],
       [T_PATHS, "-k", "adam"], "weight decay applied after the optimizer"),
    _m("adv_loss_ignored", TRN,
       [("attacks.make_loss_fn(models.eval_view(model), config.adv_loss)",
         "attacks.make_loss_fn(models.eval_view(model))")],
       [T_PATHS, "-k", "l1_adversarial"], "training attack ignores adv_loss"),
    _m("batches_reuse_key", "spurjax/data.py",
       [("yield _render(jax.random.fold_in(key, t), config, batch_size, flags)[0]",
         "yield _render(jax.random.fold_in(key, 0), config, batch_size, flags)[0]")],
       [T_PATHS, "-k", "batches"], "data.batches repeats one batch"),
    _m("data_p_static", "spurjax/data.py",
       [("  p: float = 0.9\n",
         "  p: float = flax.struct.field(pytree_node=False, default=0.9)\n")],
       ["tests/test_compiles_once.py", "-k", "data_renderer"],
       "a new p recompiles the renderer"),
    _m("eval_set_chunk_per_part", "spurjax/data.py",
       [("    wb, _ = _generate(k_wb, config, n_groups, \"waterbirds_test\", size)",
         "    wb, _ = _generate(k_wb, config, n_groups, \"waterbirds_test\", n_groups)"),
        ("    sh, _ = _generate(k_shift, config, n_shifted, \"shifted\", size)",
         "    sh, _ = _generate(k_shift, config, n_shifted, \"shifted\", n_shifted)")],
       ["tests/test_compiles_once.py", "-k", "eval_set"], "one renderer compilation per part"),
    _m("grid_map_recompiles", "spurjax/parallel.py",
       [("@functools.lru_cache(maxsize=128)\ndef _compiled", "def _compiled")],
       ["tests/test_compiles_once.py", "-k", "grid_map"], "every sweep retraces"),
    _m("empirical_wrong_dual_norm", "spurjax/empirical.py",
       [("n_w = norms.dual_norm(w, norm)", "n_w = norms.dual_norm(w, \"l2\")")],
       [T_PATHS, "-k", "fit_adversarial"], "empirical fit uses the l2 penalty for every norm"),
    _m("scale_law_without_eps_l1", "sims/scale_law.py",
       [("eps_linf=8.0, eps_l1=10.0, seeds=[0]", "eps_linf=8.0, seeds=[0]")],
       [T_PATHS, "-k", "scale_law"], "scale_law --norms=l1 raises KeyError (the old bug)"),
]


def _files(root: str) -> list[str]:
  out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                       cwd=root, capture_output=True, text=True, check=True).stdout
  return [f for f in out.splitlines() if f and os.path.isfile(os.path.join(root, f))]


def _copy_repo(dst: str) -> None:
  for f in _files(ROOT):
    target = os.path.join(dst, f)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(os.path.join(ROOT, f), target)


def _apply(text: str, mutant: Mutant) -> str | None:
  """The mutated text, or None if a substitution's text is not found exactly once."""
  for old, new in mutant.subs:
    if text.count(old) != 1:
      return None
    text = text.replace(old, new)
  return text


def _pytest(copy: str, args: tuple[str, ...], env: dict, timeout: int) -> tuple[int, str]:
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
         "--no-header", *args]
  try:
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return -1, "timeout"
  return proc.returncode, proc.stdout + proc.stderr


def _summary(output: str) -> str:
  """pytest's last summary line, e.g. '1 failed, 3 passed in 2.0s'."""
  lines = [l for l in output.splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
  if lines:
    return lines[-1].strip("= ")
  rest = output.strip().splitlines()
  return rest[-1] if rest else ""


def _reason(output: str) -> str:
  """The first failure line pytest prints (`E   ...`), to see why a mutant was killed."""
  for line in output.splitlines():
    if line.startswith("E "):
      return line[1:].strip()[:110]
  return ""


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default="", help="comma-separated mutant names")
  parser.add_argument("--json", default=None, help="write the summary to this path")
  parser.add_argument("--baseline", action="store_true",
                      help="first check that the selections pass without mutation")
  parser.add_argument("--list", action="store_true", help="list the mutants and exit")
  parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
  args = parser.parse_args(argv)

  mutants = MUTANTS
  if args.only:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - {m.name for m in MUTANTS})
    if unknown:
      parser.error(f"--only: unknown mutants {unknown}; see --list")
    mutants = [m for m in MUTANTS if m.name in names]
  if args.list:
    for m in mutants:
      print(f"{m.name:34s} {m.path:28s} {m.why}")
    return 0

  work = tempfile.mkdtemp(prefix="spurjax_mutants_")
  copy = os.path.join(work, "repo")
  _copy_repo(copy)
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(work, "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env["PYTHONPATH"] = copy
  rows = []
  try:
    if args.baseline:
      for sel in sorted({m.tests for m in mutants}):
        rc, out = _pytest(copy, sel, env, args.timeout)
        print(f"baseline {' '.join(sel)}: {_summary(out)}", flush=True)
        if rc != 0:
          print(out[-3000:])
          print("baseline FAILED: fix the tests before reading the mutants", file=sys.stderr)
          return 2
    for m in mutants:
      path = os.path.join(copy, m.path)
      with open(path) as f:
        original = f.read()
      mutated = _apply(original, m)
      t0 = time.time()
      if mutated is None:
        rows.append((m.name, " ".join(m.tests), "STALE", "snippet not found"))
        print(f"{m.name}: STALE (snippet not found in {m.path})", flush=True)
        continue
      try:
        with open(path, "w") as f:
          f.write(mutated)
        rc, out = _pytest(copy, m.tests, env, args.timeout)
      finally:
        with open(path, "w") as f:
          f.write(original)
      if rc in (1, 2):      # test failures, or errors during collection
        status = "killed"
      elif rc == 0:
        status = "SURVIVED"
      else:                 # timeout, no tests collected, internal error
        status = f"ERROR(rc={rc})"
      rows.append((m.name, " ".join(m.tests), status, _summary(out)))
      print(f"{m.name}: {status} ({_summary(out)}; {time.time() - t0:.0f}s)\n    "
            f"{_reason(out)}", flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)

  w = max(len(r[0]) for r in rows)
  wt = max(len(r[1]) for r in rows)
  print(f"\n{'mutant':{w}s}  {'tests run':{wt}s}  killed    pytest")
  for name, tests, status, summary in rows:
    print(f"{name:{w}s}  {tests:{wt}s}  {status:8s}  {summary}")
  killed = [r[0] for r in rows if r[2] == "killed"]
  survivors = [r[0] for r in rows if r[2] != "killed"]
  print(f"\n{len(killed)} of {len(rows)} mutants killed"
        + (f"; not killed: {', '.join(survivors)}" if survivors else ""))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"mutants": len(rows), "killed": len(killed), "survivors": survivors}, f,
                indent=1)
      f.write("\n")
  return 0 if not survivors else 1


if __name__ == "__main__":
  sys.exit(main())

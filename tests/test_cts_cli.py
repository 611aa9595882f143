import json

import pytest

from fastcl.cli import main



def test_run_synthetic2d_writes_results_and_plots(tmp_path, capsys):
    out = tmp_path / "syn"
    rc = main(["run", "reptile,cts,cts-noshift,cts-accurate", "--family", "synthetic2d", "--inner-steps", "4",
               "--repetitions", "2", "--seeds", "2", "--cts-test-steps", "5", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in ("reptile", "cts", "cts-noshift", "cts-accurate"):
        assert f"| {name} |" in printed
    assert f"results written to {out}/results.json, results.csv" in printed  # where the results went
    res = json.loads((out / "results.json").read_text())
    r = res["learners"]
    assert r["reptile"]["runs"][0]["meta_steps"] == 2 and r["cts"]["runs"][0]["meta_steps"] == 8
    assert r["cts-accurate"]["runs"][0]["inner_steps"] == 2 * (1 + 2 + 3 + 4)
    assert r["cts-noshift"]["config"]["shift"] is False
    assert r["cts"]["config"]["reset_optimizer"] is True  # the authors' synthetic code
    assert len(r["cts"]["runs"][0]["phi"]) == 1 + 8
    assert (out / "results.csv").read_text().splitlines()[0].startswith("learner,seed,meta_test_adam")
    for png in ("trajectories.png", "metatest.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --resume reuses the finished runs
    rc = main(["run", "cts", "--family", "synthetic2d", "--inner-steps", "4", "--repetitions", "2", "--seeds", "2",
               "--cts-test-steps", "5", "--out", str(out), "--no-progress", "--no-plots", "--resume"])
    assert rc == 0
    again = json.loads((out / "results.json").read_text())["learners"]["cts"]
    assert again["runs"] == r["cts"]["runs"]


def test_run_images_family(tmp_path, data_dir, capsys):
    d = data_dir
    out = tmp_path / "img"
    rc = main(["run", "reptile,cts,mtl-pretrain,scratch-init", "--family", "images", "--data", str(d), "--inner-steps", "2",
               "--repetitions", "2", "--cts-train", "mnist,mnist-rot90", "--cts-test", "mnist-inverted",
               "--cts-per-task", "40", "--cts-test-train", "40", "--cts-test-steps", "2", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["learners"]
    assert set(res) == {"reptile", "cts", "mtl-pretrain", "scratch-init"}
    for r in res.values():
        assert 0 <= r["runs"][0]["test_acc"]["mnist-inverted"] <= 1
    # supp. Table 3 at K = 100: Reptile 2, CTS 0.1; supp. C.2: the optimizer state is kept
    assert res["cts"]["config"]["meta_lr"] == 0.1 and res["reptile"]["config"]["meta_lr"] == 2.0
    assert res["cts"]["config"]["reset_optimizer"] is False
    assert (out / "accuracy.png").exists()


@pytest.mark.parametrize("argv, match", [
    (["mtl-pretrain", "--family", "synthetic2d"], "images family"),
    (["cts", "--family", "nope"], "--family"),
    (["cts", "--set", "optimizer=rmsprop"], "optimizer"),
    (["cts", "--cts-coeffs", "0.7"], "--cts-coeffs"),
    (["cts", "--cts-coeffs=0.7,-1"], "--cts-coeffs"),
    (["cts", "--cts-start=1,2;3"], "--cts-start"),
    (["cts", "--cts-angles", "authors", "--tasks", "4"], "--cts-angles"),
])
def test_run_errors(tmp_path, capsys, argv, match):
    assert main(["run", *argv, "--out", str(tmp_path), "--no-progress"]) == 2
    assert match in capsys.readouterr().err


def test_run_synthetic2d_several_starts_and_coeffs(tmp_path, capsys):
    """--cts-start grid runs the authors' nine starts; the record keeps each and averages them;
    --cts-coeffs changes the loss (and the fingerprint)."""
    out = tmp_path / "grid"
    argv = ["run", "reptile", "--family", "synthetic2d", "--inner-steps", "2", "--repetitions", "1",
            "--cts-test-steps", "3", "--cts-start", "grid", "--no-progress", "--no-plots"]
    assert main([*argv, "--out", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["learners"]["reptile"]["runs"][0]
    assert len(run["starts"]) == 9
    assert [s["phi"][0] for s in run["starts"]] == [[x, y] for x in (-5, 5, 15) for y in (-5, 5, 15)]
    assert run["final_adam"] == pytest.approx(sum(s["final_adam"] for s in run["starts"]) / 9)
    out2 = tmp_path / "rounded"
    assert main([*argv, "--out", str(out2), "--cts-coeffs", "0.738,0.995"]) == 0
    run2 = json.loads((out2 / "results.json").read_text())["learners"]["reptile"]["runs"][0]
    assert run2["final_adam"] != run["final_adam"]
    out3 = tmp_path / "authors"
    assert main([*argv, "--out", str(out3), "--cts-angles", "authors"]) == 0
    run3 = json.loads((out3 / "results.json").read_text())["learners"]["reptile"]["runs"][0]
    assert run3["final_adam"] != run["final_adam"]


@pytest.mark.parametrize("argv, match", [
    # --iterations counts meta-iterations in MAML / FTML; CTS's length is M, the repetitions
    (["cts", "--iterations", "3"], "--iterations does nothing for cts"),
    (["reptile", "--family", "images", "--iterations", "3"], "use --repetitions"),
    (["cts", "--family", "images", "--tasks", "3"], "--tasks does nothing for the images family"),
    (["cts", "--family", "images", "--cts-start=1,1"], "--cts-start does nothing for the images family"),
    (["cts", "--data", "somewhere"], "--data does nothing for the synthetic2d family"),
    (["reptile", "--cts-train", "mnist"], "--cts-train does nothing for the synthetic2d family"),
    (["cts-error", "--inner-steps", "3"], "--inner-steps does nothing for cts-error"),
    (["cts-error", "--set", "meta_lr=1"], "--set does nothing for cts-error"),
    (["cts", "--memory", "1"], "--memory does nothing for cts"),
    (["cts", "--maml-query", "2"], "--maml-query does nothing for cts"),
])
def test_an_option_cts_does_not_read_is_refused(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    assert main(["run", *argv, "--no-progress", "--out", str(out)]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_repetitions_sets_m(tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["run", "reptile", "--inner-steps", "2", "--repetitions", "3", "--cts-test-steps", "2", "--no-progress",
            "--no-plots", "--out", str(out)]
    assert main(argv) == 0
    r = json.loads((out / "results.json").read_text())["learners"]["reptile"]
    assert r["config"]["repetitions"] == 3 and r["runs"][0]["meta_steps"] == 3  # Reptile: one meta step each

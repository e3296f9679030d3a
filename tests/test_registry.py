"""Dataset registry: download (checksums, offline, caching, no partial files) and one preparer per layout.

No network: raw files are tiny hand-written samples in each source's real layout, served by a local HTTP
server in a thread or a file:// URL, or put straight into the cache as a hand download would be.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import socket
import sys
import tarfile
import threading
import zipfile
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from cutrec.config import DataConfig, build_config
from cutrec.data import registry
from cutrec.data.registry import DATASETS, _fetch_spec, dataset_table, fetch
from cutrec.errors import CutrecError

NAMES = ["ml-100k", "ml-1m", "ml-20m", "amazon-beauty", "amazon-toys", "amazon-sports", "gowalla", "steam",
         "yelp", "zvuk", "megamarket", "30music"]


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tar(members: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _parquet(columns: dict) -> bytes:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def _utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


ML_100K = _zip({"ml-100k/u.data": b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n", "ml-100k/u.info": b""})


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server: `files` maps paths to bodies; `/truncated` promises 1000 bytes and sends 10."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    files: dict[str, bytes] = {}
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path == "/truncated":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"0" * 10)
                return
            if self.path not in files:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(files[self.path])))
            self.end_headers()
            self.wfile.write(files[self.path])

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", files=files, requests=requests)
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------------------
# the registry itself


def test_registry_holds_exactly_the_named_datasets():
    assert list(DATASETS) == NAMES
    assert all(spec.name == name for name, spec in DATASETS.items())


@pytest.mark.parametrize("name", NAMES)
def test_spec_defaults_are_valid_data_config(name):
    spec = DATASETS[name]
    fields = {field.name for field in dataclasses.fields(DataConfig)}
    assert set(spec.preprocessing) <= fields
    config = build_config({"data": spec.preprocessing})
    assert all(getattr(config.data, key) == value for key, value in spec.preprocessing.items())
    assert spec.format == "tsv" and spec.url.startswith("https://") and "\n" not in spec.description
    assert spec.citation and spec.raw_file


def test_malformed_checksum_is_refused():
    with pytest.raises(CutrecError, match=r"'md5:123'.*md5:<32 hex digits>"):
        dataclasses.replace(DATASETS["ml-1m"], checksum="md5:123")


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(CutrecError) as error:
        fetch("ml-1mm", tmp_path)
    message = str(error.value)
    assert "'ml-1mm'" in message and "did you mean 'ml-1m'" in message
    assert all(name in message for name in NAMES)
    assert "or pass a local file with --data PATH" in message


def test_dataset_table_lists_every_dataset():
    table = dataset_table()
    for spec in DATASETS.values():
        assert spec.name in table and spec.url in table
    assert "manual:" in table and "trust on first use" in table and "md5 pinned" in table


# ------------------------------------------------------------------------------------------------------------
# downloading


def test_download_verifies_checksum_and_never_downloads_twice(server, tmp_path):
    server.files["/ml-100k.zip"] = ML_100K
    spec = dataclasses.replace(DATASETS["ml-100k"], url=server.url + "/ml-100k.zip", checksum=_md5(ML_100K))
    prepared = _fetch_spec(spec, tmp_path)
    assert prepared == tmp_path / "prepared" / "ml-100k.tsv"
    assert prepared.read_text() == "user_id\titem_id\ttimestamp\trating\n196\t242\t881250949\t3.0\n" \
                                   "186\t302\t891717742\t3.0\n"
    assert (tmp_path / "raw" / "ml-100k.zip").read_bytes() == ML_100K
    assert _leftovers(tmp_path) == ["ml-100k.tsv", "ml-100k.zip"]
    assert _fetch_spec(spec, tmp_path) == prepared
    assert server.requests == ["/ml-100k.zip"]


def test_checksum_mismatch_removes_the_file(server, tmp_path):
    server.files["/ml-100k.zip"] = ML_100K
    expected = "md5:" + "0" * 32
    spec = dataclasses.replace(DATASETS["ml-100k"], url=server.url + "/ml-100k.zip", checksum=expected)
    with pytest.raises(CutrecError) as error:
        _fetch_spec(spec, tmp_path)
    message = str(error.value)
    assert f"expected {expected}" in message and f"got {_md5(ML_100K)}" in message
    assert "ml-100k.zip" in message and "removed" in message
    assert _leftovers(tmp_path) == []


def test_a_placed_raw_file_with_a_wrong_checksum_is_removed(tmp_path):
    raw = tmp_path / "raw" / "ml-100k.zip"
    raw.parent.mkdir()
    raw.write_bytes(b"not the archive")
    with pytest.raises(CutrecError, match="checksum mismatch"):
        _fetch_spec(DATASETS["ml-100k"], tmp_path)
    assert _leftovers(tmp_path) == []


def test_unreachable_url_explains_how_to_proceed(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-20m.zip"
    with pytest.raises(CutrecError) as error:
        _fetch_spec(dataclasses.replace(DATASETS["ml-20m"], url=url), tmp_path)
    message = str(error.value)
    assert f"could not reach {url}" in message and "offline" in message
    assert str(tmp_path / "raw" / "ml-20m.zip") in message
    assert "--data ml-20m/ratings.csv --data.user_col=userId --data.item_col=movieId" in message
    assert _leftovers(tmp_path) == []


def test_http_error_names_the_status(server, tmp_path):
    spec = dataclasses.replace(DATASETS["ml-1m"], url=server.url + "/missing.zip")
    with pytest.raises(CutrecError, match=r"answered HTTP 404.*--data PATH"):
        _fetch_spec(spec, tmp_path)
    assert _leftovers(tmp_path) == []


def test_interrupted_download_leaves_no_partial_file(server, tmp_path):
    spec = dataclasses.replace(DATASETS["ml-1m"], url=server.url + "/truncated")
    with pytest.raises(CutrecError, match="after 10 of 1000 bytes"):
        _fetch_spec(spec, tmp_path)
    assert _leftovers(tmp_path) == []


def test_file_url_without_checksum_prints_the_sha256(tmp_path, capsys):
    data = b"AUSER1,BITEM1,5.0,1369699200\n"
    source = tmp_path / "ratings_Beauty.csv"
    source.write_bytes(data)
    spec = dataclasses.replace(DATASETS["amazon-beauty"], url=source.as_uri())
    prepared = _fetch_spec(spec, tmp_path / "cache")
    assert prepared.read_text().splitlines()[1] == "AUSER1\tBITEM1\t1369699200\t5.0"
    err = capsys.readouterr().err
    assert hashlib.sha256(data).hexdigest() in err and "not verified" in err and "trust on first use" in err


def test_manual_dataset_says_where_to_put_the_file(tmp_path):
    with pytest.raises(CutrecError) as error:
        fetch("zvuk", tmp_path)
    message = str(error.value)
    assert "cannot be downloaded automatically" in message
    assert "https://www.kaggle.com/datasets/alexxl/zvuk-dataset" in message
    assert str(tmp_path / "raw" / "zvuk-interactions.parquet") in message
    assert "--data zvuk-interactions.parquet --data.item_col=track_id" in message


# ------------------------------------------------------------------------------------------------------------
# preparing: one hand-written sample per raw layout


def _steam_lines() -> bytes:
    lines = [
        {"username": "player one", "hours": 0.1, "products": 41, "product_id": "725280", "page_order": 0,
         "date": "2017-12-17", "text": "it's \"fine\"", "early_access": False, "page": 1},
        {"username": "Two", "product_id": "35140", "date": "2018-01-04", "user_id": "765"},
        {"hours": 2.0, "product_id": "35140", "date": "2018-01-05"},  # no username: skipped
    ]
    return gzip.compress("".join(repr(line) + "\n" for line in lines).encode())


REVIEWS = "yelp_academic_dataset_review.json"


def _yelp_reviews() -> bytes:
    reviews = [
        {"review_id": "r1", "user_id": "u1", "business_id": "b1", "stars": 4.0,
         "date": "2018-07-07 22:09:11", "text": "good"},
        {"review_id": "r2", "user_id": "u2", "business_id": "b1", "stars": 2.0, "date": "2016-03-09"},
    ]
    return "".join(json.dumps(review) + "\n" for review in reviews).encode()


def _yelp_archive() -> bytes:
    """The official layout: a zip holding a tar holding the JSON-lines files."""
    inner = _tar({"yelp_academic_dataset_tip.json": b"{}\n", f"json/{REVIEWS}": _yelp_reviews()}, "w")
    return _zip({"Yelp JSON/yelp_dataset.tar": inner, "Yelp JSON/Dataset_User_Agreement.pdf": b"%PDF"})


def _idomaar() -> bytes:
    events = (
        b'event.play\t287144\t1390231051\t{"playtime":192}\t'
        b'{"subjects":[{"type":"user","id":44361}],"objects":[{"type":"track","id":4698874}]}\n'
        b'event.play\t287145\t1390231243\t{"playtime":-1}\t'
        b'{"subjects":[{"type":"user","id":44361}],"objects":[{"type":"track","id":838286}]}\n'
    )
    return _tar({"30Music/entities/users.idomaar": b"", "30Music/relations/events.idomaar": events}, "w:gz")


def _zvuk() -> bytes:
    pa = pytest.importorskip("pyarrow")
    return _parquet({
        "user_id": pa.array([5, 5], pa.int32()),
        "session_id": pa.array([1, 1], pa.int32()),
        "datetime": pa.array([datetime(2023, 3, 1, 10, 0, 0), datetime(2023, 3, 1, 10, 3, 30, 500)],
                             pa.timestamp("ns")),
        "track_id": pa.array([77, 78], pa.int32()),
        "play_duration": pa.array([180, 12], pa.int32()),
    })


def _megamarket() -> bytes:
    pa = pytest.importorskip("pyarrow")
    return _parquet({
        "user_id": pa.array([1, 1, 2]),
        "datetime": pa.array([datetime(2023, 1, 15), datetime(2023, 1, 16), datetime(2023, 1, 17)],
                             pa.timestamp("us")),
        "event": pa.array([0, 2, 2], pa.int8()),
        "item_id": pa.array([10, 10, 11]),
        "category_id": pa.array([3, 3, 4]),
        "price": pa.array([-0.1, -0.1, 1.2]),
    })


ML_1M = _zip({"ml-1m/ratings.dat": b"1::1193::5::978300760\n1::661::3::978302109\n"})
ML_20M = _zip(
    {"ml-20m/ratings.csv": b"userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n2,29,4.0,1112484676\n"}
)
GOWALLA = gzip.compress(
    b"7\t2010-10-19T23:55:27Z\t30.2\t-97.7\t22847\n7\t2010-10-18T22:17:43Z\t30.3\t-97.8\t420315\n"
)
PREPARED = {
    "ml-100k": (ML_100K, ["196\t242\t881250949\t3.0", "186\t302\t891717742\t3.0"]),
    "ml-1m": (ML_1M, ["1\t1193\t978300760\t5.0", "1\t661\t978302109\t3.0"]),
    "ml-20m": (ML_20M, ["1\t2\t1112486027\t3.5", "2\t29\t1112484676\t4.0"]),
    "amazon-toys": (b"AUSER1,BITEM1,5.0,1369699200\nAUSER2,BITEM1,3.0,1355443200\n",
                    ["AUSER1\tBITEM1\t1369699200\t5.0", "AUSER2\tBITEM1\t1355443200\t3.0"]),
    "gowalla": (GOWALLA,
                [f"7\t22847\t{_utc('2010-10-19T23:55:27')}", f"7\t420315\t{_utc('2010-10-18T22:17:43')}"]),
    "steam": (_steam_lines(),
              [f"player one\t725280\t{_utc('2017-12-17')}", f"Two\t35140\t{_utc('2018-01-04')}"]),
    "yelp": (_yelp_archive(),
             [f"u1\tb1\t{_utc('2018-07-07 22:09:11')}\t4.0", f"u2\tb1\t{_utc('2016-03-09')}\t2.0"]),
    "30music": (_idomaar(), ["44361\t4698874\t1390231051", "44361\t838286\t1390231243"]),
}
PARQUET = {
    "zvuk": (_zvuk, [f"5\t77\t{_utc('2023-03-01 10:00:00')}", f"5\t78\t{_utc('2023-03-01 10:03:30')}"]),
    "megamarket": (_megamarket, [f"1\t10\t{_utc('2023-01-16')}", f"2\t11\t{_utc('2023-01-17')}"]),
}


def _place(tmp_path, name: str, data: bytes):
    """Put a raw file into the cache as a hand download would; the spec trusts it (no checksum)."""
    spec = dataclasses.replace(DATASETS[name], checksum=None)
    raw = tmp_path / "raw" / spec.raw_file
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(data)
    return spec


def _check_prepared(path, rows: list[str]) -> None:
    header = "user_id\titem_id\ttimestamp" + ("\trating" if rows[0].count("\t") == 3 else "")
    assert path.read_text().splitlines() == [header, *rows]


@pytest.fixture(params=[1, 1 << 18], ids=["row-by-row", "one-chunk"])
def chunk_rows(request, monkeypatch):
    """Prepare in chunks of one row too, so chunk boundaries (and empty chunks) are exercised."""
    monkeypatch.setattr(registry, "_CHUNK_ROWS", request.param)


@pytest.mark.parametrize("name", list(PREPARED))
def test_each_text_layout_prepares_the_expected_tsv(name, tmp_path, capsys, chunk_rows):
    data, rows = PREPARED[name]
    prepared = _fetch_spec(_place(tmp_path, name, data), tmp_path)
    _check_prepared(prepared, rows)
    assert _leftovers(tmp_path / "prepared") == [f"{name}.tsv"]
    if name == "steam":
        assert "skipped 1 reviews" in capsys.readouterr().err


def test_yelp_reviews_can_also_sit_directly_in_the_zip(tmp_path):
    spec = _place(tmp_path, "yelp", _zip({REVIEWS: _yelp_reviews()}))
    _check_prepared(_fetch_spec(spec, tmp_path), PREPARED["yelp"][1])


@pytest.mark.parametrize("name", list(PARQUET))
def test_each_parquet_layout_prepares_the_expected_tsv(name, tmp_path, chunk_rows):
    build, rows = PARQUET[name]
    _check_prepared(_fetch_spec(_place(tmp_path, name, build()), tmp_path), rows)


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    spec = _place(tmp_path, "zvuk", _zvuk())
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(CutrecError, match=r"pip install 'cutrec\[parquet\]'"):
        _fetch_spec(spec, tmp_path)
    assert _leftovers(tmp_path / "prepared") == []


def test_a_damaged_archive_is_reported_and_nothing_is_prepared(tmp_path):
    spec = _place(tmp_path, "ml-1m", b"this is not a zip archive")
    with pytest.raises(CutrecError, match=r"could not prepare .*ml-1m\.tsv.*delete it and rerun"):
        _fetch_spec(spec, tmp_path)
    assert _leftovers(tmp_path / "prepared") == []


def test_a_line_in_the_wrong_layout_is_named(tmp_path):
    spec = _place(tmp_path, "ml-1m", _zip({"ml-1m/ratings.dat": b"1::1193::5::978300760\n1::661::3\n"}))
    with pytest.raises(CutrecError, match=r"'1::661::3' has 3 fields separated by '::', expected 4"):
        _fetch_spec(spec, tmp_path)


@pytest.mark.parametrize("bad", ["yesterday", "99999999999999999999999"])
def test_a_bad_timestamp_is_named(tmp_path, bad):
    raw = f"AUSER1,BITEM1,5.0,1369699200\nAUSER2,BITEM2,4.0,{bad}\n".encode()
    spec = _place(tmp_path, "amazon-sports", raw)
    with pytest.raises(CutrecError, match=rf"timestamp '{bad}' cannot be read as int64"):
        _fetch_spec(spec, tmp_path)
    assert _leftovers(tmp_path / "prepared") == []


def test_an_archive_without_the_expected_member_is_named(tmp_path):
    spec = _place(tmp_path, "ml-20m", _zip({"ml-20m/movies.csv": b"movieId,title\n"}))
    with pytest.raises(CutrecError, match=r"no member 'ml-20m/ratings\.csv'"):
        _fetch_spec(spec, tmp_path)

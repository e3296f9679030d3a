"""Named public datasets: where each raw file lives, its checksum, and how it becomes one prepared table.

`fetch(name, cache_dir)` downloads the raw file once into `cache_dir/raw/`, verifies it, and prepares it once
into `cache_dir/prepared/<name>.tsv` with the header `user_id, item_id, timestamp[, rating]` (timestamps in
int64 unix seconds). Every file is written under a temporary name and then moved into place, so an interrupted
run never leaves a partial file behind. Where no checksum is published, the sha256 of the download is printed
and the file is trusted on first use. Datasets behind a login or a licence form are never downloaded: fetch
says where to put the hand-downloaded file.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import difflib
import gzip
import hashlib
import http.client
import io
import itertools
import json
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, NamedTuple

import numpy as np

from cutrec import __version__
from cutrec.console import note, progress
from cutrec.errors import CutrecError

_CHUNK_BYTES = 1 << 20  # download read size
_CHUNK_ROWS = 1 << 18  # rows parsed and written at a time while preparing
_TIMEOUT_S = 60  # per socket operation
_HEADER = "user_id\titem_id\ttimestamp"  # of every prepared file, then "\trating" where the source has one
_CHECKSUM = re.compile(r"(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})")
_DEFAULT_HINT = (
    "`--data PATH` (a table you converted yourself, with columns user_id, item_id, timestamp; name other "
    "columns with --data.user_col=... --data.item_col=... --data.time_col=...)"
)


class _Rows(NamedTuple):
    """One chunk of interactions; the columns have the same length."""

    users: Sequence
    items: Sequence
    timestamps: np.ndarray  # int64 unix seconds
    ratings: np.ndarray | None  # float64; None when the source has no ratings


@dataclass(frozen=True)
class DatasetSpec:
    """A public dataset: its source, checksum, how to prepare it, and the preprocessing it is run with."""

    name: str  # e.g. "ml-1m"
    description: str  # one line: what, who publishes it, size
    url: str  # public source of the raw file (for a manual download: the page to get it from)
    checksum: str | None  # "md5:..." or "sha256:..." of the raw file; None when none is published
    format: Literal["tsv", "sequences"]  # what the prepared file is
    preprocessing: dict  # default DataConfig values for this dataset
    citation: str  # paper or source to credit
    raw_file: str  # the raw file's name under cache_dir/raw/
    prepare: Callable[[Path], Iterator[_Rows]]  # reads the raw file, yields chunks of interactions
    manual: str | None = None  # why it must be downloaded by hand; None: fetch downloads it
    data_hint: str | None = None  # how to pass the raw file (or a member of it) straight to --data

    def __post_init__(self) -> None:
        if self.checksum is not None and not _CHECKSUM.fullmatch(self.checksum):
            raise CutrecError(
                f"dataset {self.name!r} has checksum {self.checksum!r}; write 'md5:<32 hex digits>' or "
                "'sha256:<64 hex digits>', or None when none is published"
            )


def fetch(name: str, cache_dir: str | Path) -> Path:
    """The prepared TSV of a named dataset, downloaded and prepared on first use."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise CutrecError(
            f"unknown dataset {name!r}{guess}; known: {', '.join(DATASETS)}; "
            "or pass a local file with --data PATH"
        )
    return _fetch_spec(DATASETS[name], cache_dir)


def dataset_table() -> str:
    """What `cutrec datasets` prints: each dataset's description, source, checksum status and defaults."""
    width = max(len(name) for name in DATASETS) + 2
    indent = " " * width
    lines = ["Named datasets (`cutrec train --dataset NAME`); files are cached under data.cache_dir.", ""]
    for spec in DATASETS.values():
        checksum = (
            f"{_algorithm(spec)} pinned, verified after download"
            if spec.checksum
            else "none published; the sha256 is printed after download (trust on first use)"
        )
        defaults = " ".join(f"{key}={_toml(value)}" for key, value in spec.preprocessing.items())
        lines += [f"{spec.name:<{width}}{spec.description}", f"{indent}source:   {spec.url}"]
        if spec.manual:
            lines.append(f"{indent}manual:   {spec.manual}; put {spec.raw_file} under <cache_dir>/raw/")
        lines += [f"{indent}checksum: {checksum}", f"{indent}defaults: {defaults}", ""]
    lines.append("Any other data: pass a local file with --data PATH.")
    return "\n".join(lines)


def _toml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# ----------------------------------------------------------------------------------------------------------
# download and cache


def _fetch_spec(spec: DatasetSpec, cache_dir: str | Path) -> Path:
    cache = Path(cache_dir).expanduser()
    prepared = cache / "prepared" / f"{spec.name}.tsv"
    if prepared.is_file():
        return prepared
    raw = cache / "raw" / spec.raw_file
    if raw.is_file():
        _verify(spec, raw, _hash_file(raw, _algorithm(spec)), remove=raw)
    elif spec.manual:
        raise CutrecError(
            f"{spec.name} cannot be downloaded automatically: {spec.manual}. {_by_hand(spec, raw)}"
        )
    else:
        _download(spec, raw)
    _prepare(spec, raw, prepared)
    return prepared


def _by_hand(spec: DatasetSpec, raw: Path) -> str:
    return (
        f"Download {spec.url} by hand, then either save {spec.raw_file} as {raw} and rerun (cutrec "
        "prepares it), "
        f"or pass it with {spec.data_hint or _DEFAULT_HINT}"
    )


def _algorithm(spec: DatasetSpec) -> str:
    return spec.checksum.split(":")[0] if spec.checksum else "sha256"


def _hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(spec: DatasetSpec, path: Path, actual: str, remove: Path) -> None:
    """Check a raw file's digest: on a mismatch delete `remove` and explain; without a checksum, print it."""
    algorithm = _algorithm(spec)
    if spec.checksum is None:
        note(
            f"cutrec: {spec.name}: no checksum is published for {spec.raw_file}, so it was not verified "
            f"(trust on first use); its sha256 is {actual}")
    elif spec.checksum != f"{algorithm}:{actual}":
        remove.unlink(missing_ok=True)
        raise CutrecError(
            f"checksum mismatch for {spec.raw_file} from {spec.url} (saved as {path}): expected "
            f"{spec.checksum}, got {algorithm}:{actual}; the file was removed. Rerun to download it again; "
            "if it keeps failing the source has changed: download it by hand and pass it with "
            f"{spec.data_hint or _DEFAULT_HINT}"
        )


def _download(spec: DatasetSpec, raw: Path) -> None:
    """Stream the raw file to a temporary name, verify it, then move it into place."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(spec.url, headers={"User-Agent": f"cutrec/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        raise CutrecError(
            f"{spec.url} answered HTTP {err.code} {err.reason}; the file may have moved. "
            f"{_by_hand(spec, raw)}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _offline(spec, raw, err) from None
    digest = hashlib.new(_algorithm(spec), usedforsecurity=False)
    total = int(response.headers.get("Content-Length") or 0) or None
    received = 0
    handle, tmp_name = tempfile.mkstemp(dir=raw.parent, prefix=f".{spec.raw_file}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        bar = progress(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=spec.name)
        with response, os.fdopen(handle, "wb") as file, bar:
            while chunk := _read(response, spec, raw):
                file.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise _offline(spec, raw, f"the connection closed after {received} of {total} bytes")
        _verify(spec, raw, digest.hexdigest(), remove=tmp)
        os.replace(tmp, raw)
    finally:
        tmp.unlink(missing_ok=True)


def _read(response: IO[bytes], spec: DatasetSpec, raw: Path) -> bytes:
    try:
        return response.read(_CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as err:
        raise _offline(spec, raw, err) from None


def _offline(spec: DatasetSpec, raw: Path, reason: object) -> CutrecError:
    return CutrecError(
        f"could not reach {spec.url} ({reason}); is this machine offline? {_by_hand(spec, raw)}"
    )


def _prepare(spec: DatasetSpec, raw: Path, prepared: Path) -> None:
    """Write the prepared TSV under a temporary name, then move it into place."""
    prepared.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=prepared.parent, prefix=f".{prepared.name}.", suffix=".part")
    tmp = Path(tmp_name)
    written = 0
    try:
        bar = progress(desc=f"preparing {spec.name}", unit=" rows", unit_scale=True)
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out, bar:
            for chunk, rows in enumerate(spec.prepare(raw)):
                if chunk == 0:
                    out.write(_HEADER + ("\n" if rows.ratings is None else "\trating\n"))
                _write_rows(out, rows)
                written += len(rows.users)
                bar.update(len(rows.users))
        if written == 0:
            raise CutrecError(
                f"{raw} holds no interactions; it is empty or not the {spec.name} download: "
                "delete it and rerun"
            )
        os.replace(tmp, prepared)
    except CutrecError:
        raise
    except (OSError, EOFError, ValueError, LookupError, TypeError, SyntaxError, zipfile.BadZipFile,
            tarfile.TarError) as err:
        raise CutrecError(
            f"could not prepare {prepared} from {raw}: {err}; if the raw file is damaged, delete it and "
            "rerun to download it again"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_rows(out: IO[str], rows: _Rows) -> None:
    """Tab-separated; an id holding a tab, a quote or a line break is quoted the CSV way."""
    columns = [rows.users, rows.items, rows.timestamps, *([] if rows.ratings is None else [rows.ratings])]
    columns = [column.tolist() if isinstance(column, np.ndarray) else column for column in columns]
    csv.writer(out, delimiter="\t", lineterminator="\n").writerows(zip(*columns, strict=True))


# ----------------------------------------------------------------------------------------------------------
# parsing helpers


def _batches(lines: Iterable[str]) -> Iterator[list[str]]:
    iterator = iter(lines)
    while batch := list(itertools.islice(iterator, _CHUNK_ROWS)):
        yield batch


def _array(values: Sequence[str], dtype: str, what: str, source: Path) -> np.ndarray:
    """Parse strings into an array; name the first value that does not parse."""
    try:
        return np.asarray(values, dtype=dtype)
    except (ValueError, OverflowError):
        bad = next((value for value in values if not _parses(value, dtype)), values[0])
        raise CutrecError(
            f"{source}: {what} {bad!r} cannot be read as {dtype}; the file is damaged or not the expected "
            "download: delete it and rerun"
        ) from None


def _parses(value: str, dtype: str) -> bool:
    try:
        np.asarray([value], dtype=dtype)
    except (ValueError, OverflowError):
        return False
    return True


def _unix_seconds(values: Sequence[str], source: Path) -> np.ndarray:
    return _array(values, "int64", "timestamp", source)


def _iso_seconds(values: Sequence[str], source: Path) -> np.ndarray:
    """ISO dates or date-times ('2010-07-24T13:45:06Z', '2018-07-07 22:09:11', '2017-12-17'), read as UTC."""
    naive = [value[:-1] if value.endswith("Z") else value for value in values]
    return _array(naive, "datetime64[s]", "time", source).astype(np.int64)


def _delimited(
    lines: Iterable[str],
    sep: str,
    columns: tuple[int, int, int, int | None],
    source: Path,
    seconds: Callable[[Sequence[str], Path], np.ndarray] = _unix_seconds,
) -> Iterator[_Rows]:
    """Rows of delimited text; `columns` gives the positions of user, item, time and rating (None: none)."""
    user_at, item_at, time_at, rating_at = columns
    width = max(at for at in columns if at is not None) + 1
    for batch in _batches(lines):
        fields = [line.rstrip("\r\n").split(sep) for line in batch if line.strip()]
        short = next((row for row in fields if len(row) < width), None)
        if short is not None:
            raise CutrecError(
                f"{source}: the line {sep.join(short)[:200]!r} has {len(short)} fields separated by {sep!r}, "
                f"expected {width}; the file is not the expected download: delete it and rerun"
            )
        ratings = None
        if rating_at is not None:
            ratings = _array([row[rating_at] for row in fields], "float64", "rating", source)
        yield _Rows(
            [row[user_at] for row in fields],
            [row[item_at] for row in fields],
            seconds([row[time_at] for row in fields], source),
            ratings,
        )


@contextlib.contextmanager
def _zip_member(raw: Path, member: str) -> Iterator[IO[str]]:
    """One text member of a zip archive, read as a stream."""
    with zipfile.ZipFile(raw) as archive:
        if member not in archive.namelist():
            raise CutrecError(
                f"{raw} has no member {member!r}; it is not the expected archive: delete it and rerun"
            )
        with archive.open(member) as binary:
            yield io.TextIOWrapper(binary, encoding="utf-8")


def _tar_member(archive: tarfile.TarFile, suffix: str) -> IO[str] | None:
    """The first member whose name ends with `suffix`, as text; None when there is none.

    Members are visited in order and read as a stream, so a large archive is never unpacked to disk."""
    for member in archive:
        if member.isfile() and member.name.endswith(suffix):
            return io.TextIOWrapper(archive.extractfile(member), encoding="utf-8")
    return None


def _parquet_batches(raw: Path, columns: list[str]) -> Iterator:
    """Record batches of the named columns, streamed from a parquet file (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CutrecError(
            f"{raw} is a parquet file, and reading parquet needs pyarrow: pip install 'cutrec[parquet]'"
        ) from None
    parquet = pq.ParquetFile(raw)
    names = parquet.schema_arrow.names
    missing = [column for column in columns if column not in names]
    if missing:
        raise CutrecError(
            f"{raw} has no column(s) {', '.join(missing)} (it has {', '.join(names)}); it is not the "
            "expected download: delete it and rerun"
        )
    yield from parquet.iter_batches(batch_size=_CHUNK_ROWS, columns=columns)


def _arrow_seconds(column, source: Path) -> np.ndarray:
    """An arrow timestamp column as int64 unix seconds (UTC)."""
    import pyarrow as pa

    if not pa.types.is_timestamp(column.type) or column.null_count:
        raise CutrecError(
            f"{source}: the time column has type {column.type} with {column.null_count} missing values; "
            "expected timestamps without gaps: the file is not the expected download"
        )
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[column.type.unit]
    return column.cast(pa.int64()).to_numpy() // per_second


# ----------------------------------------------------------------------------------------------------------
# one preparer per raw layout


def _movielens_100k(raw: Path) -> Iterator[_Rows]:
    """ml-100k.zip: u.data, tab-separated user, item, rating, timestamp."""
    with _zip_member(raw, "ml-100k/u.data") as lines:
        yield from _delimited(lines, "\t", (0, 1, 3, 2), raw)


def _movielens_1m(raw: Path) -> Iterator[_Rows]:
    """ml-1m.zip: ratings.dat, 'UserID::MovieID::Rating::Timestamp'."""
    with _zip_member(raw, "ml-1m/ratings.dat") as lines:
        yield from _delimited(lines, "::", (0, 1, 3, 2), raw)


def _movielens_20m(raw: Path) -> Iterator[_Rows]:
    """ml-20m.zip: ratings.csv with the header userId,movieId,rating,timestamp."""
    with _zip_member(raw, "ml-20m/ratings.csv") as lines:
        yield from _delimited(itertools.islice(lines, 1, None), ",", (0, 1, 3, 2), raw)


def _amazon_ratings(raw: Path) -> Iterator[_Rows]:
    """Amazon ratings-only CSV without a header: user, item, rating, timestamp."""
    with open(raw, encoding="utf-8") as lines:
        yield from _delimited(lines, ",", (0, 1, 3, 2), raw)


def _gowalla(raw: Path) -> Iterator[_Rows]:
    """loc-gowalla_totalCheckins.txt.gz: tab-separated user, ISO time, latitude, longitude, location id."""
    with gzip.open(raw, "rt", encoding="utf-8") as lines:
        yield from _delimited(lines, "\t", (0, 4, 1, None), raw, seconds=_iso_seconds)


_STEAM_KEYS = {"username", "product_id", "date"}


def _steam(raw: Path) -> Iterator[_Rows]:
    """steam_reviews.json.gz: one Python-literal dict per line; each review is an event (as in SASRec)."""
    skipped = 0
    with gzip.open(raw, "rt", encoding="utf-8") as lines:
        for batch in _batches(lines):
            reviews = [ast.literal_eval(line) for line in batch if line.strip()]
            kept = [review for review in reviews if isinstance(review, dict) and _STEAM_KEYS <= review.keys()]
            skipped += len(reviews) - len(kept)
            yield _Rows(
                [review["username"] for review in kept],
                [review["product_id"] for review in kept],
                _iso_seconds([review["date"] for review in kept], raw),
                None,
            )
    if skipped:
        note(f"cutrec: steam: skipped {skipped} reviews without username, product_id or date")


_YELP_REVIEWS = "yelp_academic_dataset_review.json"


def _yelp(raw: Path) -> Iterator[_Rows]:
    """Yelp-JSON.zip, the review JSON lines directly or inside a .tar: user_id, business_id, stars, date."""
    with zipfile.ZipFile(raw) as archive:
        names = archive.namelist()
        direct = [name for name in names if name.endswith(_YELP_REVIEWS)]
        if direct:
            with archive.open(direct[0]) as binary:
                yield from _yelp_reviews(io.TextIOWrapper(binary, encoding="utf-8"), raw)
            return
        for tar_name in (name for name in names if name.endswith(".tar")):
            with archive.open(tar_name) as binary, tarfile.open(fileobj=binary, mode="r:") as tar:
                lines = _tar_member(tar, _YELP_REVIEWS)
                if lines is not None:
                    yield from _yelp_reviews(lines, raw)
                    return
    raise CutrecError(f"{raw} holds no {_YELP_REVIEWS}; it is not the Yelp Open Dataset JSON download")


def _yelp_reviews(lines: IO[str], raw: Path) -> Iterator[_Rows]:
    for batch in _batches(lines):
        reviews = [json.loads(line) for line in batch if line.strip()]
        yield _Rows(
            [review["user_id"] for review in reviews],
            [review["business_id"] for review in reviews],
            _iso_seconds([review["date"] for review in reviews], raw),
            np.asarray([review["stars"] for review in reviews], dtype=np.float64),
        )


def _zvuk(raw: Path) -> Iterator[_Rows]:
    """zvuk-interactions.parquet: user_id, track_id, datetime; one row per play."""
    for batch in _parquet_batches(raw, ["user_id", "track_id", "datetime"]):
        yield _Rows(
            batch.column("user_id").to_numpy(zero_copy_only=False),
            batch.column("track_id").to_numpy(zero_copy_only=False),
            _arrow_seconds(batch.column("datetime"), raw),
            None,
        )


def _megamarket(raw: Path) -> Iterator[_Rows]:
    """megamarket.parquet: user_id, item_id, datetime, event; keeps purchases (event 2), as the seed paper."""
    for batch in _parquet_batches(raw, ["user_id", "item_id", "datetime", "event"]):
        purchase = batch.column("event").to_numpy(zero_copy_only=False) == 2
        yield _Rows(
            batch.column("user_id").to_numpy(zero_copy_only=False)[purchase],
            batch.column("item_id").to_numpy(zero_copy_only=False)[purchase],
            _arrow_seconds(batch.column("datetime"), raw)[purchase],
            None,
        )


def _thirty_music(raw: Path) -> Iterator[_Rows]:
    """ThirtyMusic.tar.gz in the idomaar format; relations/events.idomaar has tab-separated lines
    `event.play  <id>  <unix time>  {properties}  {"subjects":[{"type":"user","id":U}],"objects":[tracks]}`.
    One row per played track."""
    with tarfile.open(raw, mode="r:gz") as archive:
        lines = _tar_member(archive, "relations/events.idomaar")
        if lines is None:
            raise CutrecError(
                f"{raw} holds no relations/events.idomaar; it is not the 30Music idomaar archive"
            )
        for batch in _batches(lines):
            users, tracks, times = [], [], []
            for line in batch:
                if not line.strip():
                    continue
                fields = line.split("\t")
                links = json.loads(fields[4])
                for track in links["objects"]:
                    users.append(links["subjects"][0]["id"])
                    tracks.append(track["id"])
                    times.append(fields[2])
            yield _Rows(users, tracks, _unix_seconds(times, raw), None)


# ----------------------------------------------------------------------------------------------------------
# the registry

_RATED_DEFAULTS = {"rating_col": "rating", "min_rating": 3.5, "dedupe": True, "min_user_count": 5,
                   "min_item_count": 5}
_IMPLICIT_DEFAULTS = {"dedupe": True, "min_user_count": 5, "min_item_count": 5}
_MOVIELENS_CITATION = (
    "F. Maxwell Harper and Joseph A. Konstan. The MovieLens Datasets: History and Context. ACM TiiS 5(4), "
    "2015. https://doi.org/10.1145/2827872"
)
_AMAZON_2014_CITATION = (
    "J. McAuley, C. Targett, Q. Shi, A. van den Hengel. Image-based Recommendations on Styles and "
    "Substitutes. SIGIR 2015; R. He, J. McAuley. Ups and Downs: Modeling the Visual Evolution of Fashion "
    "Trends with One-Class Collaborative Filtering. WWW 2016"
)
_SBER_CITATION = (
    "V. Shevchenko, N. Belousov, A. Vasilev, et al. From Variability to Stability: Advancing RecSys "
    "Benchmarking Practices. KDD 2024. arXiv:2402.09766"
)
_KAGGLE_LOGIN = "Kaggle serves it only to a signed-in account, in a browser or through the kaggle CLI"


def _amazon(name: str, category: str, raw_file: str, size: str) -> DatasetSpec:
    # URL: the "ratings only" files of McAuley's 2014 Amazon product data
    # (http://jmcauley.ucsd.edu/data/amazon/index_2014.html, hosted on SNAP), the Beauty/Sports/Toys used by
    # SASRec, BERT4Rec and S3Rec. No checksum is published for them.
    return DatasetSpec(
        name=name,
        description=f"Amazon {category} ratings (1-5 stars, 2014 ratings-only file), McAuley's lab: {size}",
        url=f"https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/{raw_file}",
        checksum=None,
        format="tsv",
        preprocessing={"rating_col": "rating", **_IMPLICIT_DEFAULTS},
        citation=_AMAZON_2014_CITATION,
        raw_file=raw_file,
        prepare=_amazon_ratings,
    )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        # URLs and MD5s: GroupLens publishes <zip>.md5 beside each archive, e.g.
        # https://files.grouplens.org/datasets/movielens/ml-1m.zip.md5 ("MD5 (ml-1m.zip) = c4d9..."); the same
        # values are hard-coded in eli-osherovich/papers_with_code (datasets/movielens/dl_config.py).
        DatasetSpec(
            name="ml-100k",
            description="MovieLens 100K ratings (1-5 stars) from GroupLens: 943 users, 1,682 movies, "
            "100,000 ratings",
            url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
            checksum="md5:0e33842e24a9c977be4e0107933c0723",
            format="tsv",
            preprocessing=dict(_RATED_DEFAULTS),
            citation=_MOVIELENS_CITATION,
            raw_file="ml-100k.zip",
            prepare=_movielens_100k,
        ),
        DatasetSpec(
            name="ml-1m",
            description="MovieLens 1M ratings (1-5 stars) from GroupLens: 6,040 users, 3,706 movies, "
            "1,000,209 ratings",
            url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
            checksum="md5:c4d9eecfca2ab87c1945afe126590906",
            format="tsv",
            preprocessing=dict(_RATED_DEFAULTS),
            citation=_MOVIELENS_CITATION,
            raw_file="ml-1m.zip",
            prepare=_movielens_1m,
        ),
        DatasetSpec(
            name="ml-20m",
            description="MovieLens 20M ratings (0.5-5 stars) from GroupLens: 138,493 users, 26,744 movies, "
            "20,000,263 ratings",
            url="https://files.grouplens.org/datasets/movielens/ml-20m.zip",
            checksum="md5:cd245b17a1ae2cc31bb14903e1204af3",
            format="tsv",
            preprocessing=dict(_RATED_DEFAULTS),
            citation=_MOVIELENS_CITATION,
            raw_file="ml-20m.zip",
            prepare=_movielens_20m,
            data_hint="`--data ml-20m/ratings.csv --data.user_col=userId --data.item_col=movieId "
            "--data.rating_col=rating` (ratings.csv from inside the zip)",
        ),
        _amazon("amazon-beauty", "Beauty", "ratings_Beauty.csv",
                "~1.2M users, ~249K items, 2,023,070 ratings"),
        _amazon("amazon-toys", "Toys and Games", "ratings_Toys_and_Games.csv",
                "~1.3M users, ~328K items, 2,252,771 ratings"),
        _amazon("amazon-sports", "Sports and Outdoors", "ratings_Sports_and_Outdoors.csv",
                "~2.0M users, ~479K items, 3,268,695 ratings"),
        # URL: SNAP (https://snap.stanford.edu/data/loc-gowalla.html), which publishes no checksum; this MD5
        # is the one hard-coded by sisinflab/DataRec (datarec/datasets/gowalla/gowalla_checkins.py, CHECKSUM).
        DatasetSpec(
            name="gowalla",
            description="Gowalla location check-ins (2009-2010) from Stanford SNAP: 107,092 users, "
            "1,280,969 locations, 6,442,890 check-ins",
            url="https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz",
            checksum="md5:8ebd5ed2dd376d8982987c49429cb9f9",
            format="tsv",
            preprocessing=dict(_IMPLICIT_DEFAULTS),
            citation="E. Cho, S. A. Myers, J. Leskovec. Friendship and Mobility: User Movement in "
            "Location-Based Social Networks. KDD 2011",
            raw_file="loc-gowalla_totalCheckins.txt.gz",
            prepare=_gowalla,
        ),
        # URL: the file the SASRec authors link (github.com/kang205/SASRec), also listed on
        # https://cseweb.ucsd.edu/~jmcauley/datasets.html#steam_data. No checksum is published.
        DatasetSpec(
            name="steam",
            description="Steam game reviews crawled by the SASRec authors (UCSD): ~2.57M users, ~32K games, "
            "7,793,069 reviews; each review is one interaction",
            url="https://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz",
            checksum=None,
            format="tsv",
            preprocessing=dict(_IMPLICIT_DEFAULTS),
            citation="W.-C. Kang, J. McAuley. Self-Attentive Sequential Recommendation. ICDM 2018",
            raw_file="steam_reviews.json.gz",
            prepare=_steam,
        ),
        # URL: the Yelp Open Dataset page; the archive (Yelp-JSON.zip) is offered only after accepting the
        # Dataset User Agreement. sisinflab/DataRec (datarec/datasets/yelp/yelp_v1.py) pins
        # md5 b0c36fe2d00a52d8de44fa3b2513c9d2 for the copy it downloaded, but Yelp re-issues the archive
        # under the same name, so no checksum is pinned here.
        DatasetSpec(
            name="yelp",
            description="Yelp Open Dataset reviews (1-5 stars) from Yelp: ~2.0M users, ~150K businesses, "
            "~7.0M reviews; manual download (licence agreement)",
            url="https://www.yelp.com/dataset",
            checksum=None,
            format="tsv",
            preprocessing=dict(_RATED_DEFAULTS),
            citation="Yelp Open Dataset, Yelp Inc., https://www.yelp.com/dataset (Dataset User Agreement)",
            raw_file="Yelp-JSON.zip",
            prepare=_yelp,
            manual="Yelp asks you to accept its Dataset User Agreement in a browser before downloading",
        ),
        # URLs: Zvuk and MegaMarket were released on Kaggle by the Sber AI Lab authors of arXiv:2402.09766.
        # The seed paper's code (On-Point-RND/MemoryEfficientSRS, src_benchmarks/preprocessing.py) downloads
        # alexxl/zvuk-dataset (zvuk-interactions.parquet) and alexxl/megamarket (megamarket.parquet) through
        # the Kaggle API and keeps MegaMarket purchases (event == 2). No checksums are published.
        DatasetSpec(
            name="zvuk",
            description="Zvuk music-streaming plays from Sber AI Lab: ~383K users, ~1.5M tracks, "
            "~245M plays; manual download (Kaggle)",
            url="https://www.kaggle.com/datasets/alexxl/zvuk-dataset",
            checksum=None,
            format="tsv",
            preprocessing=dict(_IMPLICIT_DEFAULTS),
            citation=_SBER_CITATION,
            raw_file="zvuk-interactions.parquet",
            prepare=_zvuk,
            manual=_KAGGLE_LOGIN,
            data_hint="`--data zvuk-interactions.parquet --data.item_col=track_id --data.time_col=datetime`",
        ),
        DatasetSpec(
            name="megamarket",
            description="MegaMarket e-commerce events from Sber AI Lab: ~2.7M users, ~3.6M items, "
            "~197M events (prepared file keeps purchases only); manual download (Kaggle)",
            url="https://www.kaggle.com/datasets/alexxl/megamarket",
            checksum=None,
            format="tsv",
            preprocessing=dict(_IMPLICIT_DEFAULTS),
            citation=_SBER_CITATION,
            raw_file="megamarket.parquet",
            prepare=_megamarket,
            manual=_KAGGLE_LOGIN,
            data_hint="`--data megamarket.parquet --data.time_col=datetime` (every event type, "
            "not only purchases)",
        ),
        # URL: the authors' share link as given by MaurizioFD/RecSys2019_DeepLearning_Evaluation
        # (Data_manager/ThirtyMusic/ThirtyMusicReader.py), which also notes that it cannot be fetched
        # automatically. No checksum is published.
        DatasetSpec(
            name="30music",
            description="30Music listening events collected from Last.fm (idomaar format): ~45K users, "
            "~5.6M tracks, ~31M plays; manual download",
            url="https://polimi365-my.sharepoint.com/:u:/g/personal/10322330_polimi_it/"
            "EW7gg5cotvhPrVC-GyTbSTUB1pKpJ7-8kjsFBB3x8TmK-A?e=ffwHy8",
            checksum=None,
            format="tsv",
            preprocessing=dict(_IMPLICIT_DEFAULTS),
            citation="R. Turrin, M. Quadrana, A. Condorelli, R. Pagano, P. Cremonesi. 30Music Listening and "
            "Playlists Dataset. RecSys 2015 Posters, CEUR-WS Vol-1441",
            raw_file="ThirtyMusic.tar.gz",
            prepare=_thirty_music,
            manual="the authors share it through a OneDrive link that only a browser can open",
        ),
    ]
}

"""Job labels: which job flavour ran on which node when.

Accepted inputs
---------------
**CSV** (``read_labels_csv``; ``DIDACT_LABELS_CSV``, ``didact testbed ingest --labels``)::

    # comment lines start with '#'; blank lines are skipped
    node,start,end,label
    testbed01,2026-11-27T10:00:00Z,2026-11-27T10:01:00Z,cpu_n
    testbed01,1795773660,1795773720,io_good
    testbed01,2026-11-27 11:05:00+01:00,2026-11-27 11:16:00+01:00,exclude

* a header line naming at least ``node,start,end,label`` (any order, any case, extra
  columns ignored);
* ``node``: the node's name *as the telemetry names it*: with the Prometheus source that is
  the value of the label ``DIDACT_PROMETHEUS_NODE_LABEL`` picks (default ``instance``, e.g.
  ``127.0.0.1:9100``; set it to ``node``/``nodename`` or relabel in Prometheus to use host
  names).  A node that is not in the day's raw data is an error that lists the known ones;
* ``start``/``end``: ISO 8601 (``2026-01-01T10:00:00Z``, ``2026-01-01 10:00:00+01:00``; no
  zone = ``tz``, UTC by default) or Unix epoch seconds (decimals allowed), mixed freely;
* **end exclusive**: a label covers ``start ≤ t < end``.  An AI-ready sample is the interval
  between two scrapes and takes the label that holds its *middle* (``ts − dt_s/2``), so
  with 1 s scrapes ``10:00:00–10:01:00`` labels the 60 intervals ending 10:00:01 … 10:01:00,
  and back-to-back labels (one's end = the next's start) never share a sample;
* ``label``: the job flavour; a sample no label covers is ``unknown`` (unlabelled: trained
  on, never scored).  The reserved label **``exclude``** (:data:`~didact_core.schema.EXCLUDE`)
  marks an interval to leave out — a segment that hung, installs running beside a
  workload: its samples are dropped from ``ai_ready_metrics`` and counted as
  ``excluded_samples`` in the cleaning report, so neither training nor evaluation sees
  them.  ``exclude`` intervals may overlap job labels (that is their use);
* an optional ``job_id`` column names the job a row belongs to: rows of one job on several
  nodes are a multi-node job, whose nodes the cluster model compares with each other (job peers);
* overlapping job labels on one node are an error unless ``allow_overlap=True``
  (``DIDACT_LABELS_ALLOW_OVERLAP=1`` for the nightly job; then the label that started last
  holds a sample).

**Slurm** (``read_sacct``): the output of ::

    sacct --allusers --allocations --parsable2 --noconvert \\
          --format=JobID,JobName,NodeList,Start,End,State --starttime=... --endtime=...

i.e. ``|``-separated with a header; the columns used are ``NodeList``, ``Start``, ``End``
and the label column (``JobName`` by default; ``label_column="Partition"`` or any other
works), and ``JobID`` when present (as ``job_id``).  ``NodeList`` is Slurm's compressed host
list (``node[001-004,010],gpu01``) and is expanded to one row per node.  Jobs that never ran
or still run (``Start``/``End`` = ``Unknown``/``None``, ``NodeList`` = ``None assigned``) are
skipped and counted in
``df.attrs["skipped"]``.  Slurm prints local time without a zone: pass ``tz`` (e.g.
``"Europe/Zurich"``) if the cluster is not on UTC.

Validation (both readers, all problems at once): unparseable times, ``end`` ≤ ``start``,
a node not in ``known_nodes`` (when given), missing values, and two labels overlapping
on one node (unless ``allow_overlap``) → :class:`~didact_core.errors.DidactError` whose
message lists the offending **line numbers** of the file (header = line 1).

The result has :data:`~didact_core.schema.LABEL_COLUMNS` (``node`` string, ``start``/
``end`` UTC ms timestamps, ``label`` string) plus ``line`` (source line number), sorted
by (node, start).  :func:`join_labels` attaches them to samples.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.data.hostlist import expand_hostlist
from didact_core.errors import DidactError
from didact_core.schema import EXCLUDE, LABEL_COLUMNS, TS_DTYPE

#: Slurm words meaning "no time yet"
SLURM_NO_TIME = {"unknown", "none", "", "n/a"}
#: optional column naming the job a row belongs to (CSV ``job_id``, sacct ``JobID``)
JOB_ID = "job_id"
MAX_LISTED = 20
#: known nodes named in the "unknown node" message at most
MAX_KNOWN_SHOWN = 10


def parse_times(values: pd.Series, tz: str = "UTC") -> pd.Series:
    """Strings (ISO 8601 or epoch seconds) → UTC ms timestamps; NaT where unparseable."""
    s = values.astype("string").str.strip()
    out = pd.Series(pd.NaT, index=s.index, dtype=TS_DTYPE)
    num = pd.to_numeric(s, errors="coerce")
    is_num = num.notna()
    if is_num.any():
        out[is_num] = pd.to_datetime(num[is_num], unit="s", utc=True).astype(TS_DTYPE)
    rest = ~is_num & s.notna() & (s != "")
    if rest.any():
        txt = s[rest]
        has_zone = txt.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True, na=False)
        for zoned, part in ((True, txt[has_zone]), (False, txt[~has_zone])):
            if part.empty:
                continue
            parsed = pd.to_datetime(part, errors="coerce", format="ISO8601", utc=zoned)
            if not zoned:
                parsed = parsed.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
            out[part.index] = parsed.astype(TS_DTYPE)
    return out


def _fail(what: str, problems: list[str], fix: str) -> None:
    if problems:
        shown = problems[:MAX_LISTED]
        more = f"; … and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DidactError(what, "; ".join(shown) + more, fix)


def _lines(lines: Iterable[int]) -> str:
    lines = sorted(set(int(x) for x in lines))
    shown = ", ".join(map(str, lines[:MAX_LISTED]))
    return shown + (f" (+{len(lines) - MAX_LISTED} more)" if len(lines) > MAX_LISTED else "")


def validate_labels(
    df: pd.DataFrame, what: str, known_nodes: Iterable[str] | None = None, allow_overlap: bool = False
) -> pd.DataFrame:
    """Check parsed labels (columns node, start, end, label, line; start/end may be NaT).

    Raises one :class:`DidactError` listing every problem with its line numbers.
    """
    problems = []
    missing = df["node"].isna() | (df["node"].astype("string").str.strip() == "") | df["label"].isna()
    if missing.any():
        problems.append(f"line(s) {_lines(df.loc[missing, 'line'])}: empty node or label")
    bad_start, bad_end = df["start"].isna(), df["end"].isna()
    if bad_start.any():
        problems.append(
            f"line(s) {_lines(df.loc[bad_start, 'line'])}: start time not understood "
            f"(e.g. {df.loc[bad_start, 'start_raw'].iloc[0]!r})"
        )
    if bad_end.any():
        problems.append(
            f"line(s) {_lines(df.loc[bad_end, 'line'])}: end time not understood "
            f"(e.g. {df.loc[bad_end, 'end_raw'].iloc[0]!r})"
        )
    ok_t = ~bad_start & ~bad_end
    backwards = ok_t & (df["end"] <= df["start"])
    if backwards.any():
        problems.append(f"line(s) {_lines(df.loc[backwards, 'line'])}: end is not after start")
    fix = (
        "fix or remove those lines (times ISO 8601 or epoch seconds; end exclusive and after "
        "start; one label per node at a time, or set DIDACT_LABELS_ALLOW_OVERLAP=1 to let the "
        "latest-starting label win)"
    )
    if known_nodes is not None:
        known = sorted(set(map(str, known_nodes)))
        unknown = ~missing & ~df["node"].astype(str).isin(known)
        if unknown.any():
            names = sorted(set(df.loc[unknown, "node"].astype(str)))
            problems.append(f"line(s) {_lines(df.loc[unknown, 'line'])}: unknown node(s) {names[:10]}; "
                            f"the data's nodes are {_known(known)}")  # fmt: skip
            fix = (
                "name nodes as the telemetry does: with Prometheus, DIDACT_PROMETHEUS_NODE_LABEL picks the "
                "label that names nodes (default 'instance', i.e. host:port); set it (e.g. to 'node' or "
                "'nodename') and re-ingest, or write those names in the labels file; " + fix
            )
    if not allow_overlap:
        # `exclude` marks a stretch to leave out: it may lie over job labels
        jobs = df["label"].astype(str).str.strip() != EXCLUDE
        good = df.loc[ok_t & ~backwards & ~missing & jobs].sort_values(["node", "start", "end"], kind="stable")
        if len(good) > 1:
            same_node = good["node"].to_numpy()[1:] == good["node"].to_numpy()[:-1]
            # end of everything earlier on the node (nested intervals too)
            end_ms = good["end"].array.asi8
            node_codes = pd.factorize(good["node"])[0]
            run_max = pd.Series(end_ms).groupby(node_codes).cummax().to_numpy()
            overlap = same_node & (good["start"].array.asi8[1:] < run_max[:-1])
            if overlap.any():
                lines = good["line"].to_numpy()
                # report each overlapping line with the line of the interval it runs into
                idx = np.flatnonzero(overlap) + 1
                pairs = []
                for i in idx[:MAX_LISTED]:
                    j = i - 1
                    while j > 0 and end_ms[j] != run_max[i - 1]:
                        j -= 1
                    pairs.append(f"{lines[j]}&{lines[i]}")
                problems.append(
                    f"lines {', '.join(pairs)}"
                    f"{' (+%d more)' % (len(idx) - MAX_LISTED) if len(idx) > MAX_LISTED else ''}: "
                    "labels overlap on the same node"
                )
    _fail(what, problems, fix)
    out = df.sort_values(["node", "start"], kind="stable").reset_index(drop=True)
    out["node"] = out["node"].astype(str).str.strip().astype("string")
    out["label"] = out["label"].astype(str).str.strip().astype("string")
    if JOB_ID in out.columns:  # which rows are one (multi-node) job: the cluster model's job peers
        jid = out[JOB_ID].astype("string").str.strip()
        out[JOB_ID] = jid.mask(jid == "")
        return out[[*LABEL_COLUMNS, "line", JOB_ID]]
    return out[[*LABEL_COLUMNS, "line"]]


def _known(known: list[str]) -> str:
    if not known:
        return "none (the day's raw partition lists no nodes)"
    more = f" … and {len(known) - MAX_KNOWN_SHOWN} more" if len(known) > MAX_KNOWN_SHOWN else ""
    return str(known[:MAX_KNOWN_SHOWN]) + more


def split_exclude(labels: pd.DataFrame | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(job labels, ``exclude`` intervals) of a labels frame; either None when it has none."""
    if labels is None or not len(labels) or "label" not in labels:
        return labels, None
    ex = labels["label"].astype(str).str.strip() == EXCLUDE
    if not ex.any():
        return labels, None
    return labels[~ex].reset_index(drop=True), labels[ex].reset_index(drop=True)


def read_labels_csv(
    path_or_text: str | Path | io.TextIOBase,
    known_nodes: Iterable[str] | None = None,
    tz: str = "UTC",
    allow_overlap: bool = False,
) -> pd.DataFrame:
    """Labels from a CSV with ``node,start,end,label`` columns (see the module doc)."""
    what, text = _read_text(path_or_text, "job labels CSV")
    raw_lines = text.splitlines()
    # physical line numbers of the data rows (skip blank and comment lines like pandas does)
    data_line_numbers = [
        i + 1 for i, ln in enumerate(raw_lines) if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not data_line_numbers:
        raise DidactError(what, "is empty", "write a header node,start,end,label and one line per job")
    try:
        df = pd.read_csv(
            io.StringIO(text),
            dtype=str,
            comment="#",
            skip_blank_lines=True,
            skipinitialspace=True,
            keep_default_na=False,
        )
    except (pd.errors.ParserError, ValueError) as e:
        raise DidactError(
            what, f"is not readable CSV ({e})", "write comma-separated node,start,end,label lines"
        ) from None
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise DidactError(
            what,
            f"header lacks column(s) {missing} (has {list(df.columns)})",
            "the first line must name node,start,end,label",
        )
    if len(df) != len(data_line_numbers) - 1:
        raise DidactError(
            what,
            f"{len(df)} rows parsed but {len(data_line_numbers) - 1} data lines found",
            "remove quoted line breaks from the CSV",
        )
    df["line"] = np.array(data_line_numbers[1:], dtype=np.int64)
    df = df.replace({"": None})
    return _finish(df, what, known_nodes, tz, allow_overlap)


def read_sacct(
    path_or_text: str | Path | io.TextIOBase,
    known_nodes: Iterable[str] | None = None,
    tz: str = "UTC",
    label_column: str = "JobName",
    allow_overlap: bool = False,
) -> pd.DataFrame:
    """Labels from ``sacct --parsable2`` output (see the module doc)."""
    what, text = _read_text(path_or_text, "sacct export")
    lines = text.splitlines()
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    if not numbered:
        raise DidactError(
            what, "is empty", "export with sacct --parsable2 --format=JobID,JobName,NodeList,Start,End"
        )
    header = [h.strip() for h in numbered[0][1].split("|")]
    lower = {h.lower(): i for i, h in enumerate(header)}
    need = {"nodelist": "NodeList", "start": "Start", "end": "End", label_column.lower(): label_column}
    missing = [v for k, v in need.items() if k not in lower]
    if missing:
        raise DidactError(
            what,
            f"header lacks {missing} (has {header})",
            f"export with sacct --parsable2 --format=JobID,{label_column},NodeList,Start,End",
        )
    rows, problems = [], []
    skipped = 0
    for line_no, ln in numbered[1:]:
        cells = ln.split("|")
        if len(cells) < len(header):
            problems.append(f"line {line_no}: {len(cells)} fields, header has {len(header)}")
            continue
        nodelist = cells[lower["nodelist"]].strip()
        start, end = cells[lower["start"]].strip(), cells[lower["end"]].strip()
        if (
            start.lower() in SLURM_NO_TIME
            or end.lower() in SLURM_NO_TIME
            or nodelist.lower() in ("none assigned", "none", "")
        ):
            skipped += 1
            continue
        try:
            nodes = expand_hostlist(nodelist)
        except ValueError as e:
            problems.append(f"line {line_no}: {e}")
            continue
        label = cells[lower[label_column.lower()]].strip()
        job = cells[lower["jobid"]].strip() if "jobid" in lower else None
        rows += [(n, start, end, label or None, line_no, job) for n in nodes]
    _fail(what, problems, "re-export with sacct --parsable2 (| separated, one job a line)")
    df = pd.DataFrame(rows, columns=["node", "start", "end", "label", "line", JOB_ID])
    if "jobid" not in lower:
        df = df.drop(columns=JOB_ID)
    out = _finish(df, what, known_nodes, tz, allow_overlap)
    out.attrs["skipped"] = skipped
    return out


def read_labels(
    path_or_text: str | Path | io.TextIOBase,
    known_nodes: Iterable[str] | None = None,
    tz: str = "UTC",
    fmt: str = "auto",
    allow_overlap: bool = False,
    **kw,
) -> pd.DataFrame:
    """Labels from a CSV or an sacct export; ``fmt="auto"`` picks sacct when the header
    line is ``|``-separated."""
    if fmt not in ("auto", "csv", "sacct"):
        raise DidactError(f"job labels format {fmt!r}", "is not known", "use csv, sacct or auto")
    if fmt == "auto":
        what, text = _read_text(path_or_text, "job labels")
        header = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
        fmt = "sacct" if "|" in header else "csv"
        if isinstance(path_or_text, io.TextIOBase):  # consumed: parse the text we read
            path_or_text = text if "\n" in text else text + "\n"
    if fmt == "sacct":
        return read_sacct(path_or_text, known_nodes, tz, allow_overlap=allow_overlap, **kw)
    return read_labels_csv(path_or_text, known_nodes, tz, allow_overlap)


def _read_text(src, kind: str) -> tuple[str, str]:
    """(what, text) from a stream, a path, or literal text (a str with a line break)."""
    if isinstance(src, io.TextIOBase):
        return f"{kind} {getattr(src, 'name', '<stream>')}", src.read()
    if isinstance(src, str) and "\n" in src:
        return f"{kind} <text>", src
    p = Path(src)
    if not p.exists():
        raise DidactError(f"{kind} {p}", "does not exist", "check the path")
    try:
        return f"{kind} {p}", p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DidactError(
            f"{kind} {p}", f"cannot be read ({e})", "check the path and that it is UTF-8 text"
        ) from None


def _finish(df: pd.DataFrame, what: str, known_nodes, tz: str, allow_overlap: bool) -> pd.DataFrame:
    df = df.rename(columns={"start": "start_raw", "end": "end_raw"})
    df["start"] = parse_times(df["start_raw"], tz)
    df["end"] = parse_times(df["end_raw"], tz)
    return validate_labels(df, what, known_nodes, allow_overlap)


def labels_from_frame(
    df: pd.DataFrame,
    known_nodes: Iterable[str] | None = None,
    allow_overlap: bool = False,
    what: str = "job labels",
) -> pd.DataFrame:
    """Validate an in-memory labels frame (e.g. the simulator's ``RawBlock.labels``)."""
    d = df[[*LABEL_COLUMNS, *([JOB_ID] if JOB_ID in df.columns else [])]].copy()
    d["line"] = np.arange(len(d), dtype=np.int64) + 1
    d["start_raw"], d["end_raw"] = d["start"].astype(str), d["end"].astype(str)
    d["start"] = pd.to_datetime(d["start"], utc=True, errors="coerce").astype(TS_DTYPE)
    d["end"] = pd.to_datetime(d["end"], utc=True, errors="coerce").astype(TS_DTYPE)
    return validate_labels(d, what, known_nodes, allow_overlap)


def join_labels(samples: pd.DataFrame, labels: pd.DataFrame, ts_col: str = "ts") -> pd.DataFrame:
    """Samples with a ``label`` column: the label whose [start, end) holds the sample's ts on its node.

    Samples outside every label get ``<NA>``; with overlapping labels the one that
    started last wins, except that ``exclude`` always wins.  The samples keep their order
    and index.
    """
    out = samples.drop(columns="label") if "label" in samples.columns else samples.copy()
    if labels is None or len(labels) == 0 or len(samples) == 0:
        out["label"] = pd.array([pd.NA] * len(out), dtype="string")
        return out
    at = pd.DataFrame({"ts": samples[ts_col].to_numpy(), "node": samples["node"].to_numpy()})
    jobs, exclude = split_exclude(labels)
    cat = attach_intervals(at, jobs, "label", default=_NO_LABEL)
    values = np.asarray(cat, dtype=object)
    values[values == _NO_LABEL] = None
    if exclude is not None:
        values[excluded_mask(at, exclude)] = EXCLUDE
    out["label"] = pd.array(values, dtype="string")
    return out


_NO_LABEL = "\x00no-label"


def excluded_mask(samples: pd.DataFrame, exclude: pd.DataFrame | None) -> np.ndarray:
    """True for each sample (``ts``, ``node``, optional ``dt_s``) inside an ``exclude`` interval."""
    if exclude is None or not len(exclude) or not len(samples):
        return np.zeros(len(samples), dtype=bool)
    cat = attach_intervals(samples, exclude.assign(label=EXCLUDE), "label", default=_NO_LABEL)
    return np.asarray(cat.codes) != 0


def attach_intervals(samples: pd.DataFrame, intervals: pd.DataFrame, column: str, default: str) -> pd.Categorical:
    """For each sample, the ``column`` value of the interval ``[start, end)`` on its node
    that contains the sample's time: the middle of its interval (``ts - dt_s/2``) when
    the frame has ``dt_s`` (AI-ready samples), else ``ts``.

    Vectorised: one sorted search over (node, start) keys.  Where intervals overlap the
    latest-starting one wins.
    """
    names = list(pd.unique(intervals[column].astype(str))) if len(intervals) else []
    cats = [default] + [n for n in names if n != default]
    if len(samples) == 0 or len(intervals) == 0:
        return pd.Categorical.from_codes(np.zeros(len(samples), dtype=np.int32), cats)
    if isinstance(samples["node"].dtype, pd.CategoricalDtype):
        node_cats, s_node = samples["node"].cat.categories, samples["node"].cat.codes.to_numpy()
    else:
        s_node, node_cats = pd.factorize(samples["node"].astype(str))
    s_node = s_node.astype(np.int64)
    i_node = pd.Categorical(intervals["node"].astype(str), categories=node_cats).codes.astype(np.int64)
    known = i_node >= 0
    iv = intervals[known]
    i_node = i_node[known]
    if len(iv) == 0:  # no interval on these samples' nodes (e.g. a part with no fault)
        return pd.Categorical.from_codes(np.zeros(len(samples), dtype=np.int32), cats)
    span = np.int64(10 * 86400 * 1000)  # keys: node * span + ms offset
    base = pd.to_datetime(samples["ts"], utc=True).astype("datetime64[ms, UTC]").array.asi8.min() - 5 * 86400 * 1000
    start = _ms(iv["start"]) - base
    end = _ms(iv["end"]) - base
    ts_ms = pd.to_datetime(samples["ts"], utc=True).astype("datetime64[ms, UTC]").array.asi8
    mid = ts_ms - base
    if "dt_s" in samples:
        mid = mid - (samples["dt_s"].to_numpy() * 500).astype(np.int64)
    i_key = i_node * span + start
    order = np.argsort(i_key, kind="stable")
    i_key, end, i_node = i_key[order], end[order], i_node[order]
    codes_iv = pd.Categorical(iv[column].astype(str), categories=cats).codes[order]
    s_key = s_node * span + mid
    pos = np.searchsorted(i_key, s_key, side="right") - 1
    ok = pos >= 0
    posc = np.where(ok, pos, 0)
    ok &= (i_node[posc] == s_node) & (mid < end[posc])
    codes = np.where(ok, codes_iv[posc], 0).astype(np.int32)
    _earlier_cover(codes, ~ok & (pos >= 1), pos, s_node, mid, i_node, end, codes_iv)
    return pd.Categorical.from_codes(codes, cats)


def _earlier_cover(codes, todo, pos, s_node, mid, i_node, end, codes_iv) -> None:
    """Overlapping labels: a sample whose latest-starting interval already ended takes the
    latest-starting one that still covers it (a nested label ends, the outer one resumes);
    walks back only while an earlier interval of the node ends after it (no cost otherwise)."""
    reach = pd.Series(end).groupby(i_node).cummax().to_numpy()  # latest end up to here, per node
    back = 1
    while todo.any():
        cand = pos - back
        valid = todo & (cand >= 0)
        candc = np.where(valid, cand, 0)
        valid &= (i_node[candc] == s_node) & (reach[candc] > mid)
        hit = valid & (mid < end[candc])
        codes[hit] = codes_iv[candc[hit]]
        todo = valid & ~hit
        back += 1


def _ms(col: pd.Series) -> np.ndarray:
    return pd.to_datetime(col, utc=True).astype("datetime64[ms, UTC]").array.asi8



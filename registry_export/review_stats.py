"""The dose review's aggregations (docs/dose-review.md), with pandas: :func:`summarise` turns a
:class:`~.review_data.ReviewBuilder`'s columns into a :class:`~.review_data.ReviewSummary`.

Every statistic groups by region (head or body) among its keys, so no statistic, level or chart
mixes the 16 cm and 32 cm phantoms. Quartiles: pandas' linear interpolation (type 7), as the
completeness report; values rounded to 3 decimals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dosereg.conf.reference_levels import ReferenceLevel

from .review_data import (
    HIGH_DOSE_ROWS,
    ExamStats,
    LevelCheck,
    Quartiles,
    ReviewSummary,
    TrendPoint,
    day_text,
)

if TYPE_CHECKING:
    import pandas as pd

    from .review_data import ReviewBuilder

__all__ = ["summarise"]

_REGION = {1: "head", 0: "body"}


def _frames(b: ReviewBuilder) -> tuple[pd.DataFrame, pd.DataFrame]:
    import numpy as np
    import pandas as pd

    st = pd.DataFrame({
        "study": np.frombuffer(b.st_study, dtype=np.int32), "exam": np.frombuffer(b.st_exam, dtype=np.int32),
        "head": np.frombuffer(b.st_head, dtype=np.int8), "scanner": np.frombuffer(b.st_scanner, dtype=np.int32),
        "month": np.frombuffer(b.st_month, dtype=np.int32), "day": np.frombuffer(b.st_date, dtype=np.int32),
        "dlp": np.frombuffer(b.st_dlp, dtype=np.float64), "eff": np.frombuffer(b.st_effective, dtype=np.float64),
    })
    ev = pd.DataFrame({
        "row": np.frombuffer(b.ev_study, dtype=np.int32), "protocol": np.frombuffer(b.ev_protocol, dtype=np.int32),
        "category": np.frombuffer(b.ev_category, dtype=np.int32),
        "ctdivol": np.frombuffer(b.ev_ctdivol, dtype=np.float64), "ssde": np.frombuffer(b.ev_ssde, dtype=np.float64),
        "dlp": np.frombuffer(b.ev_dlp, dtype=np.float64),
    })
    rows = ev["row"].to_numpy()
    for col in ("study", "exam", "head", "scanner", "month", "day"):
        ev[col] = st[col].to_numpy()[rows]
    return st, ev


def _quartiles(frame: pd.DataFrame, keys: list[str], col: str) -> dict[Any, Quartiles]:
    grouped = frame.dropna(subset=[col]).groupby(keys, sort=False)[col]
    q = grouped.quantile([0.25, 0.5, 0.75], interpolation="linear").unstack()
    n = grouped.count()
    return {k: Quartiles(int(n.at[k]), _r(q.at[k, 0.25]), _r(q.at[k, 0.5]), _r(q.at[k, 0.75])) for k in n.index}


def _r(v: Any) -> float:
    return round(float(v), 3)


def _median(frame: pd.DataFrame, keys: list[str], col: str) -> dict[Any, float]:
    med = frame.dropna(subset=[col]).groupby(keys, sort=False)[col].median()
    return {k: _r(v) for k, v in med.items()}


def _local(st: pd.DataFrame, ev: pd.DataFrame, b: ReviewBuilder) -> tuple[dict[Any, tuple[Any, Any]],
                                                                          tuple[str, str] | None]:
    """(exam, head) -> (CTDIvol p75, DLP p75) over the period before the latest study; None below min n."""
    settings = b.cfg.reference_levels
    dated = st[st["day"] >= 0]
    if dated.empty:
        return {}, None
    last = int(dated["day"].max())
    first = last - settings.local_period_days + 1
    st_p, ev_p = dated[dated["day"] >= first], ev[(ev["day"] >= first) & (ev["day"] >= 0)]
    counts = st_p.groupby(["exam", "head"])["study"].nunique()
    ctdi = ev_p.dropna(subset=["ctdivol"]).groupby(["exam", "head"])["ctdivol"].quantile(0.75)
    dlp = st_p.dropna(subset=["dlp"]).groupby(["exam", "head"])["dlp"].quantile(0.75)
    out = {}
    for key, n in counts.items():
        if n >= settings.local_min_n:
            out[key] = (_r(ctdi[key]) if key in ctdi.index else None, _r(dlp[key]) if key in dlp.index else None)
    return out, (day_text(first), day_text(last))


def _level_mask(frame: pd.DataFrame, level: ReferenceLevel, names: list[str], key: str = "exam") -> Any:
    import numpy as np

    mask = frame["head"].to_numpy() == (1 if level.region == "head" else 0)
    if level.exam != "*":
        wanted = [i for i, n in enumerate(names) if n.casefold() == level.exam.casefold()]
        mask &= np.isin(frame[key].to_numpy(), wanted)
    if level.category is not None and "category" in frame:
        wanted = [i for i, n in enumerate(names) if n == level.category]
        mask &= np.isin(frame["category"].to_numpy(), wanted)
    return mask


def _checks(st: pd.DataFrame, ev: pd.DataFrame, b: ReviewBuilder, key: str) -> dict[Any, tuple[LevelCheck, ...]]:
    """(group, head) -> the levels that apply, with the group's median and whether it exceeds.
    A per-study DLP level is compared with exams only (a protocol's DLP is per event)."""
    import numpy as np

    names = b.codes.names
    out: dict[Any, list[LevelCheck]] = {}
    for level in b.levels:
        if level.quantity == "dlp_mGycm":
            if key != "exam":
                continue
            mask = _level_mask(st, level, names)
            if level.category is not None:  # the studies with an event of that category
                mask &= np.isin(np.arange(len(st)), ev.loc[_level_mask(ev, level, names), "row"].unique())
            frame, col = st[mask], "dlp"
        else:
            col = "ctdivol" if level.quantity == "ctdivol_mGy" else "ssde"
            frame = ev[_level_mask(ev, level, names)]
        for k, med in _median(frame, [key, "head"], col).items():
            out.setdefault(k, []).append(LevelCheck(level, med, med > level.value))
    return {k: tuple(v) for k, v in out.items()}


def _groups(st: pd.DataFrame, ev: pd.DataFrame, b: ReviewBuilder, key: str,
            local: dict[Any, tuple[Any, Any]]) -> tuple[ExamStats, ...]:
    names = b.codes.names
    by_study = key == "exam"
    ctdi, ssde = _quartiles(ev, [key, "head"], "ctdivol"), _quartiles(ev, [key, "head"], "ssde")
    dlp = _quartiles(st if by_study else ev, [key, "head"], "dlp")
    studies = (st if by_study else ev).groupby([key, "head"])["study"].nunique()
    if by_study:
        eff = _median(st, [key, "head"], "eff")
    else:
        per = ev.drop_duplicates(["study", key, "head"]).merge(st[["eff"]], left_on="row", right_index=True)
        eff = _median(per, [key, "head"], "eff")
    checks = _checks(st, ev, b, key)
    out = []
    for k, n in studies.items():
        lc = local.get(k, (None, None))
        out.append(ExamStats(names[int(k[0])], _REGION[int(k[1])], int(n), ctdi.get(k), dlp.get(k), ssde.get(k),
                             eff.get(k), lc[0], lc[1], checks.get(k, ())))
    return tuple(sorted(out, key=lambda e: (e.region != "head", -e.studies, e.name)))


def _trends(st: pd.DataFrame, ev: pd.DataFrame, b: ReviewBuilder) -> tuple[TrendPoint, ...]:
    names = b.codes.names
    keys = ["scanner", "head", "month"]
    ev_n = ev.groupby(keys)["ctdivol"].agg(["count", "median"])
    st_n = st.groupby(keys)["dlp"].agg(["size", "median"])
    out = []
    for k, row in st_n.iterrows():
        e = ev_n.loc[k] if k in ev_n.index else None
        ct = None if e is None or e["median"] != e["median"] else _r(e["median"])
        dm = None if row["median"] != row["median"] else _r(row["median"])
        out.append(TrendPoint(names[int(k[0])], _REGION[int(k[1])], names[int(k[2])],
                              0 if e is None else int(e["count"]), ct, int(row["size"]), dm))
    return tuple(sorted(out, key=lambda t: (t.scanner, t.region, t.month)))


def _above(st: pd.DataFrame, ev: pd.DataFrame, b: ReviewBuilder) -> tuple[list[dict[str, Any]], int]:
    """Studies (events for per-event quantities) above a level other than a notification value
    (those are listed per event by the completeness report), largest ratio first."""
    names = b.codes.names
    hits: list[Any] = []
    for level in b.levels:
        if level.kind == "notification":
            continue
        if level.quantity == "dlp_mGycm":
            frame, col = st, "dlp"
        else:
            frame, col = ev, "ctdivol" if level.quantity == "ctdivol_mGy" else "ssde"
        sel = frame[_level_mask(frame, level, names) & (frame[col].to_numpy() > level.value)]
        for rec in sel.itertuples():
            hits.append((getattr(rec, col) / level.value, rec, level, col))
    hits.sort(key=lambda h: -h[0])
    protocols = _study_protocols(ev, {int(h[1].Index) for h in hits if h[3] == "dlp"}, names)
    rows = []
    for _ratio, rec, level, col in hits:
        study = int(rec.study)
        protocol = names[int(rec.protocol)] if col != "dlp" else protocols.get(int(rec.Index), "")
        rows.append({"accession_number": b.accessions[study], "study_date": b.dates[study],
                     "scanner": names[int(rec.scanner)], "exam": names[int(rec.exam)], "region": _REGION[int(rec.head)],
                     "protocol": protocol, "quantity": level.quantity, "value": _r(getattr(rec, col)),
                     "level": level.name, "level_value": _r(level.value), "kind": level.kind})
    return rows, len(hits)


def _study_protocols(ev: pd.DataFrame, rows: set[int], names: list[str]) -> dict[int, str]:
    """The protocols of the events of each (study, region) row of ``rows``, by name, in one pass."""
    if not rows:
        return {}
    sel = ev[ev["row"].isin(rows)]
    out: dict[int, set[str]] = {}
    for row, protocol in zip(sel["row"].to_numpy(), sel["protocol"].to_numpy(), strict=True):
        out.setdefault(int(row), set()).add(names[int(protocol)])
    return {row: ", ".join(sorted(ps)) for row, ps in out.items()}


def _high_dose(b: ReviewBuilder) -> tuple[dict[str, Any], ...]:
    """The HIGH_DOSE_ROWS patients with the highest cumulative DLP over the history window ending
    at their latest study, named by their studies' accession numbers (latest first)."""
    import numpy as np
    import pandas as pd

    if not b.pt_day:
        return ()
    pt = pd.DataFrame({"patient": np.frombuffer(b.pt_patient, dtype=np.int32),
                       "day": np.frombuffer(b.pt_day, dtype=np.int32),
                       "dlp": np.frombuffer(b.pt_dlp, dtype=np.float64),
                       "eff": np.frombuffer(b.pt_eff, dtype=np.float64)})
    last = pt.groupby("patient")["day"].transform("max")
    inside = pt[pt["day"] > last - b.cfg.dose.patient_history_days]
    sums = inside.groupby("patient").agg(studies=("day", "size"), dlp=("dlp", "sum"), eff=("eff", "sum"),
                                         last=("day", "max"))
    top = sums.sort_values(["dlp", "studies"], ascending=False).head(HIGH_DOSE_ROWS)
    rows = []
    for patient, row in top.iterrows():
        mine = inside[inside["patient"] == patient].sort_values("day", ascending=False)
        accessions = [str(b.pt_accession[i]) for i in mine.index[:5]]
        rows.append({"accession_numbers": ", ".join(accessions) + (" …" if len(mine) > 5 else ""),
                     "latest_study_date": day_text(int(row["last"])), "studies": int(row["studies"]),
                     "cumulative_dlp_mGycm": round(float(row["dlp"]), 2),
                     "cumulative_effective_dose_mSv": round(float(row["eff"]), 3)})
    return tuple(rows)


def summarise(b: ReviewBuilder) -> ReviewSummary:
    """The review of everything ``b`` accounted for."""
    st, ev = _frames(b)
    local, period = _local(st, ev, b)
    exams = _groups(st, ev, b, "exam", local)
    protocols = _groups(st, ev, b, "protocol", {})
    trends = _trends(st, ev, b)
    above, count = _above(st, ev, b)
    return ReviewSummary(exams, protocols, trends, tuple(above), count, b.levels, period,
                         b.cfg.reference_levels.local_min_n, b.studies, _high_dose(b), b.cfg.dose.patient_history_days)

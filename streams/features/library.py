"""The feature library: every named feature as a declarative operator over a few primitives,
and the ordered, versioned feature-vector spec that models take as their input contract.

Primitives (evaluated for a whole micro-batch at once by ``streams.features.engine``):

- ``Windowed(agg, column, window, where)``: count / sum / mean / std / min / max of a per-event
  column over the account's events in ``(ts - window, ts]``, optionally only where a flag
  column is 1 (``Share`` is the mean of a flag); the 30-day window (``MONTH_MS``: count,
  sum and mean of amounts only) is day-aligned, ``[start of the event's UTC day - 29 days,
  ts]``, and also counts the events older than the raw log keeps, from the account's day
  buckets (``streams.features.engine``);
- ``Distinct(key, window)`` and ``FirstSeen(key, window)``: distinct keys (counterparty,
  device, country) in the window, and whether the event's key is new within it;
- ``Current(column)``: a per-event column of the event itself;
- ``Sequential(kind)``: running per-account statistics in arrival order (time since the
  previous event, account age, history count/mean/z-score, exponentially weighted mean);
- ``Ratio(num, den)`` of two other features and ``Entropy`` of a set of shares;
- ``Inflow(kind, window)``: money INTO the account (other accounts' transfers to it), from
  the inflow log that the worker's repartition keeps per payee (``streams.features.inflows``);
- ``Payee(kind, window)``: the event's counterparty's own history (payments it received
  from every payer, labels known of it) and ``Labels(kind, window)``: the labels known of
  the account itself, both over hour buckets (``streams.features.payee``);
- ``Recent(kind, step)``: the account's ``step``-th latest earlier event within the week,
  as seen from this one (how many hours before it, its amount against this one's, the same
  counterparty or not): the last ``RECENT_STEPS`` events as a sequence, for the risk NN.

Window semantics, shared by the engine and the tests' brute-force reference: as of an event,
aggregate the account's events that arrived no later than it and whose event time lies in
``(ts - window, ts]``. Events may arrive up to ``GRACE_MS`` out of order and still see
complete windows. Inflow features see the inflows folded in before the event's micro-batch
(a micro-batch folds its inflow records first, then scores its transactions) whose event
time lies in ``(ts - window, ts]``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = [
    "CHANNELS",
    "DAY_MS",
    "FEATURES",
    "FEATURE_SPEC",
    "FeatureSpec",
    "GRACE_MS",
    "HIGH_RISK_COUNTRIES",
    "HIGH_RISK_MCC",
    "HORIZON_MS",
    "HOUR_MS",
    "MCC_RISK",
    "MINUTE_MS",
    "MONTH_MS",
    "READS_COUNTERPARTY",
    "REPORTING_THRESHOLD",
    "SMALL_AMOUNT",
    "TRANSFER_CHANNELS",
    "Current",
    "Distinct",
    "Entropy",
    "FirstSeen",
    "Inflow",
    "Labels",
    "Payee",
    "RECENT_KINDS",
    "RECENT_STEPS",
    "Ratio",
    "Recent",
    "Sequential",
    "Windowed",
    "recent_layout",
]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
HORIZON_MS = WEEK_MS  # the longest window: how much history an account's log keeps
GRACE_MS = HOUR_MS  # out-of-order tolerance of event times within one account

SMALL_AMOUNT = 1000.0  # "small" for the frequent_small rule
REPORTING_THRESHOLD = 10_000.0  # cash-reporting threshold; structuring stays just under it
NEAR_THRESHOLD_FROM = 0.9 * REPORTING_THRESHOLD
ROUND_UNIT = 100.0  # a "round" amount is a positive multiple of this
NIGHT_HOURS = (0, 6)  # [from, to) UTC hour of day
EWM_ALPHA = 0.2
# amount_zscore needs a history whose spread is real, not rounding: std > this * |mean|
ZSCORE_MIN_REL_STD = 1e-6

CHANNELS = ("card", "wire", "ach", "cash", "crypto", "p2p")
# Payments whose counterparty is an account that can move the money on: these are
# re-published keyed by the payee, so the payee's features see money coming in. Card and
# cash payments go to merchants and tills, whose inflows would only make hot keys.
TRANSFER_CHANNELS = ("wire", "ach", "p2p", "crypto")
MAX_INFLOW_ROWS = 4096
# the counterparty's and the labels' hour buckets span at most this many hours (31 days),
# and a counterparty remembers at least its newest this many payers
KEEP_HOURS = 31 * 24
MAX_PAYERS = 1024
PAYERS_SLACK = MAX_PAYERS // 4  # and forgets the older ones once it holds this many more
# an account keeps at most its latest this many own events within the horizon (one a
# minute for a week and a half): a bound on memory per key; windowed features of an account
# busier than that count only these
MAX_ACCOUNT_ROWS = 16_384
# The account's latest events as a sequence (Recent): this many, each with these values.
# 8 ranked as 16 did on the Fraud Detection Handbook (hybrid AP 0.7085 vs 0.7079) for half
# the values every score record carries
RECENT_STEPS = 8
RECENT_KINDS = ("hours_ago", "log_amount_ratio", "same_counterparty")
# FATF "call for action" and "increased monitoring" jurisdictions plus common secrecy
# havens; a ruleset's own list can differ, this one feeds the behaviour features.
HIGH_RISK_COUNTRIES = frozenset(
    {"IR", "KP", "MM", "SY", "YE", "AF", "KY", "PA", "VG", "BS", "RU", "VE", "HT", "SS"}
)
# Merchant-category risk in 0..1 (cash-like, gambling, money services and crypto rank high).
MCC_RISK = {
    "4829": 0.9,  # money orders / wire transfer
    "6051": 0.9,  # quasi-cash, crypto
    "6211": 0.6,  # securities brokers
    "7995": 0.9,  # gambling
    "6012": 0.7,  # financial institutions
    "5933": 0.7,  # pawn shops
    "5944": 0.5,  # jewellery
    "7011": 0.3,  # hotels
    "5732": 0.3,  # electronics
    "5999": 0.3,  # misc retail
    "5311": 0.1,
    "5411": 0.1,
    "5812": 0.1,
    "4111": 0.1,
}
MCC_UNKNOWN_RISK = 0.2  # a category not in the table
MCC_NONE_RISK = 0.0  # no merchant (transfers)
HIGH_RISK_MCC = 0.7  # an event is "high-risk MCC" at or above this


@dataclass(frozen=True)
class Windowed:
    agg: str  # count | sum | mean | std | min | max
    column: str
    window_ms: int
    where: str | None = None


@dataclass(frozen=True)
class Distinct:
    key: str  # counterparty | device | country
    window_ms: int


@dataclass(frozen=True)
class FirstSeen:
    key: str
    window_ms: int


@dataclass(frozen=True)
class Current:
    column: str


@dataclass(frozen=True)
class Sequential:
    kind: str


@dataclass(frozen=True)
class Ratio:
    num: str
    den: str
    scale: float = 1.0


@dataclass(frozen=True)
class Entropy:
    shares: tuple[str, ...]


@dataclass(frozen=True)
class Inflow:
    """Over the account's inflows in the window: ``count`` / ``sum`` / ``max`` of amounts,
    ``distinct_payers``, ``time_since`` the latest one, ``round_trip`` (the event's
    counterparty paid this account), ``shared_source`` (the most distinct payers whose own
    latest inflow came from one and the same account: scatter-gather), ``cycle`` (the
    accounts in the shortest ring the payment closes: its counterparty is on the path the
    money of an inflow came along; 0 if none)."""

    kind: str
    window_ms: int


@dataclass(frozen=True)
class Payee:
    """The event's counterparty as a payee, over hour buckets: ``count`` / ``sum`` of the
    payments it received, ``new_payers`` (payments from a payer it had not seen within 31
    days) and ``new_payer_share``, in ``(H - w, H]``; ``frauds`` / ``labelled`` / ``fraud_rate``
    (frauds over labelled) of the labels known of its payments in ``[H - w, H)``;
    ``fraud_first_hours`` / ``fraud_last_hours``: hours from H back to the first / the
    latest hour in ``[H - w, H)`` in which a fraud label of its payments became known (NaN
    when none did), how old its fraud episode is and whether it goes on; and
    ``first_payment``: this payer never paid it (within what it remembers)."""

    kind: str
    window_ms: int


@dataclass(frozen=True)
class Labels:
    """The labels known of the account's own transactions in the hours ``[H - w, H)``:
    ``frauds``, ``labelled``, ``fraud_rate`` (frauds over labelled)."""

    kind: str
    window_ms: int


@dataclass(frozen=True)
class Recent:
    """The account's ``step``-th latest event before this one (1: the latest) among those
    in its 7-day window (``(ts - 7 days, ts]``, arrived no later; at equal event times the
    one that arrived later is the later): ``hours_ago`` (this event's time minus its),
    ``log_amount_ratio`` (ln of its amount over this one's: finite for any two amounts the
    contract accepts) and ``same_counterparty`` (1 when both paid the same counterparty).
    No value (NaN) when the account has fewer such events."""

    kind: str
    step: int


Operator = (
    Windowed
    | Distinct
    | FirstSeen
    | Current
    | Sequential
    | Ratio
    | Entropy
    | Inflow
    | Payee
    | Labels
    | Recent
)
MONTH_MS = 30 * DAY_MS
MONTH_DAYS_KEPT = 31  # an account's day buckets span at most this many days
WINDOWS = {"1m": MINUTE_MS, "1h": HOUR_MS, "24h": DAY_MS, "7d": WEEK_MS}


def _build() -> dict[str, Operator]:
    f: dict[str, Operator] = {}
    # velocity: counts and sums per window
    for label, w in WINDOWS.items():
        f[f"count_{label}"] = Windowed("count", "amount", w)
        f[f"sum_{label}"] = Windowed("sum", "amount", w)
    # 30 days (day-aligned: the event's UTC day so far and the 29 days before it; the
    # events older than the raw log's horizon count from day buckets)
    f["count_30d"] = Windowed("count", "amount", MONTH_MS)
    f["sum_30d"] = Windowed("sum", "amount", MONTH_MS)
    f["amount_mean_30d"] = Windowed("mean", "amount", MONTH_MS)
    # amount statistics
    for label in ("24h", "7d"):
        for agg in ("mean", "std", "min", "max"):
            f[f"amount_{agg}_{label}"] = Windowed(agg, "amount", WINDOWS[label])
    # the seed rule's feature, structuring and small-amount counts
    f["small_count_24h"] = Windowed("count", "amount", DAY_MS, where="small")
    f["small_count_7d"] = Windowed("count", "amount", WEEK_MS, where="small")
    f["near_threshold_count_24h"] = Windowed("count", "amount", DAY_MS, where="near_threshold")
    f["near_threshold_sum_24h"] = Windowed("sum", "amount", DAY_MS, where="near_threshold")
    f["near_threshold_count_7d"] = Windowed("count", "amount", WEEK_MS, where="near_threshold")
    # behaviour shares over a week
    for flag in ("night", "weekend", "round", "cross_border", "high_risk_country"):
        f[f"{flag}_share_7d"] = Windowed("mean", flag, WEEK_MS)
    f["cross_border_count_24h"] = Windowed("sum", "cross_border", DAY_MS)
    f["high_risk_country_count_24h"] = Windowed("sum", "high_risk_country", DAY_MS)
    # channel mix
    for ch in CHANNELS:
        f[f"channel_{ch}_share_7d"] = Windowed("mean", f"channel_{ch}", WEEK_MS)
    f["channel_entropy_7d"] = Entropy(tuple(f"channel_{ch}_share_7d" for ch in CHANNELS))
    # merchant-category risk
    f["mcc_risk"] = Current("mcc_risk")
    f["mcc_risk_mean_7d"] = Windowed("mean", "mcc_risk", WEEK_MS)
    f["high_risk_mcc_count_7d"] = Windowed("sum", "high_risk_mcc", WEEK_MS)
    # distinct keys (fan-out is distinct counterparties) and first-seen flags
    for key, plural in (("counterparty", "counterparties"), ("device", "devices")):
        f[f"distinct_{plural}_24h"] = Distinct(key, DAY_MS)
        f[f"distinct_{plural}_7d"] = Distinct(key, WEEK_MS)
    f["distinct_countries_24h"] = Distinct("country", DAY_MS)
    f["distinct_countries_7d"] = Distinct("country", WEEK_MS)
    for key in ("counterparty", "device", "country"):
        f[f"first_seen_{key}_7d"] = FirstSeen(key, WEEK_MS)
    # the event itself
    f["amount_log10"] = Current("amount_log10")
    for flag in ("round", "night", "weekend", "cross_border", "high_risk_country"):
        f[f"is_{flag}"] = Current(flag)
    f["hour_of_day"] = Current("hour")
    # its channel (lib-3): the shares above move by one event in a week's, too little to
    # tell a cash deposit or a wire from the account's usual card payments
    for ch in CHANNELS:
        f[f"is_channel_{ch}"] = Current(f"channel_{ch}")
    # running per-account history (arrival order)
    for kind in (
        "time_since_prev_ms",
        "dormancy_days",
        "account_age_days",
        "hist_count",
        "hist_mean_amount",
        "amount_zscore",
        "ewm_amount",
        "amount_to_ewm",
    ):
        f[kind] = Sequential(kind)
    # money in (fan-in, pass-through, round-tripping, scatter-gather)
    for label in ("1h", "24h", "7d"):
        f[f"inflow_count_{label}"] = Inflow("count", WINDOWS[label])
        f[f"inflow_sum_{label}"] = Inflow("sum", WINDOWS[label])
    f["inflow_max_24h"] = Inflow("max", DAY_MS)
    f["distinct_payers_24h"] = Inflow("distinct_payers", DAY_MS)
    f["distinct_payers_7d"] = Inflow("distinct_payers", WEEK_MS)
    f["time_since_inflow_ms"] = Inflow("time_since", WEEK_MS)
    f["round_trip_7d"] = Inflow("round_trip", WEEK_MS)
    f["shared_source_payers_7d"] = Inflow("shared_source", WEEK_MS)
    f["cycle_7d"] = Inflow("cycle", WEEK_MS)
    # the counterparty's side: its payments from every payer and the labels known of it
    for label, w in (("1h", HOUR_MS), ("24h", DAY_MS), ("7d", WEEK_MS), ("30d", MONTH_MS)):
        f[f"payee_count_{label}"] = Payee("count", w)
    for label, w in (("24h", DAY_MS), ("7d", WEEK_MS), ("30d", MONTH_MS)):
        f[f"payee_sum_{label}"] = Payee("sum", w)
    for label, w in (("7d", WEEK_MS), ("30d", MONTH_MS)):
        f[f"payee_new_payers_{label}"] = Payee("new_payers", w)
        f[f"payee_new_payer_share_{label}"] = Payee("new_payer_share", w)
    f["payee_first_payment"] = Payee("first_payment", 0)
    for label, w in (("24h", DAY_MS), ("7d", WEEK_MS), ("30d", MONTH_MS)):
        f[f"payee_frauds_{label}"] = Payee("frauds", w)
        f[f"payee_labelled_{label}"] = Payee("labelled", w)
        f[f"payee_fraud_risk_{label}"] = Payee("fraud_rate", w)
    # how old the counterparty's fraud episode is (lib-7): a compromised terminal whose
    # first fraud label came weeks ago and whose payments go on may have been closed
    f["payee_fraud_first_hours_30d"] = Payee("fraud_first_hours", MONTH_MS)
    f["payee_fraud_last_hours_30d"] = Payee("fraud_last_hours", MONTH_MS)
    # the labels known of the account itself
    for label, w in (("7d", WEEK_MS), ("30d", MONTH_MS)):
        f[f"account_frauds_{label}"] = Labels("frauds", w)
        f[f"account_fraud_risk_{label}"] = Labels("fraud_rate", w)
    f["payee_mean_30d"] = Ratio("payee_sum_30d", "payee_count_30d")
    f["amount_to_payee_mean_30d"] = Ratio("amount", "payee_mean_30d")
    # ratios
    f["pass_through_24h"] = Ratio("sum_24h", "inflow_sum_24h")
    f["pass_through_7d"] = Ratio("sum_7d", "inflow_sum_7d")
    # money in against the account's own habits: a day's inflows in its typical payments
    f["inflow_24h_to_mean_30d"] = Ratio("inflow_sum_24h", "amount_mean_30d")
    f["sum_1h_to_24h"] = Ratio("sum_1h", "sum_24h")
    f["velocity_spike_24h_7d"] = Ratio("count_24h", "count_7d", scale=7.0)
    f["amount_to_mean_7d"] = Ratio("amount", "amount_mean_7d")
    f["amount_to_max_7d"] = Ratio("amount", "amount_max_7d")
    f["amount_to_mean_30d"] = Ratio("amount", "amount_mean_30d")
    f["count_7d_to_30d"] = Ratio("count_7d", "count_30d")
    # the last events as a sequence, latest first (lib-6): what the risk NN reads as one
    # (models.risk.net); the trees do not see them
    for step in range(1, RECENT_STEPS + 1):
        for kind in RECENT_KINDS:
            f[f"prev{step}_{kind}"] = Recent(kind, step)
    return f


FEATURES: dict[str, Operator] = _build()


@dataclass(frozen=True)
class FeatureSpec:
    """The model's input contract: feature names in order, a version, and a digest of every
    definition and constant, so a model trained on another spec is refused."""

    version: str
    names: tuple[str, ...]
    digest: str

    @property
    def label(self) -> str:
        return f"{self.version}:{self.digest}"

    def index(self, name: str) -> int:
        return self.names.index(name)

    def as_dict(self, values: list[float | None]) -> dict[str, float | None]:
        """A score record's ``features`` list by name."""
        if len(values) != len(self.names):
            raise ValueError(f"{len(values)} feature values for {len(self.names)} names")
        return dict(zip(self.names, values, strict=True))


def _digest() -> str:
    parts = [repr(sorted(FEATURES.items()))]
    parts += [repr(c) for c in (HORIZON_MS, GRACE_MS, SMALL_AMOUNT, REPORTING_THRESHOLD)]
    parts += [repr(c) for c in (ROUND_UNIT, NIGHT_HOURS, EWM_ALPHA, ZSCORE_MIN_REL_STD, CHANNELS)]
    parts += [repr(sorted(HIGH_RISK_COUNTRIES)), repr(sorted(MCC_RISK.items()))]
    parts += [repr(TRANSFER_CHANNELS), repr(MAX_INFLOW_ROWS)]
    parts += [repr((KEEP_HOURS, MAX_PAYERS, PAYERS_SLACK))]
    parts += [repr((MONTH_MS, MONTH_DAYS_KEPT))]
    parts += [repr((MCC_UNKNOWN_RISK, MCC_NONE_RISK, HIGH_RISK_MCC))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


FEATURE_SPEC = FeatureSpec("lib-7", tuple(FEATURES), _digest())


def _reads_counterparty() -> frozenset[str]:
    names = {n for n, op in FEATURES.items() if isinstance(op, Payee)}
    grew = True
    while grew:  # and the ratios built on them
        more = {
            n
            for n, op in FEATURES.items()
            if isinstance(op, Ratio) and (op.num in names or op.den in names)
        }
        grew = not more <= names
        names |= more
    return frozenset(names)


# Features read from the counterparty's state: a payment reaches it a micro-batch after it
# is scored, so their values depend on where batches were cut (and a transaction scored
# again after a restart may see more of it); every other feature depends on the events only.
READS_COUNTERPARTY = _reads_counterparty()


def recent_layout(names: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """Where the ``Recent`` features sit in ``names``: one row per step (latest first), one
    column per ``RECENT_KINDS`` entry; empty when ``names`` has none of them."""
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for step in range(1, RECENT_STEPS + 1):
        row = tuple(index.get(f"prev{step}_{kind}", -1) for kind in RECENT_KINDS)
        if -1 in row:
            break
        rows.append(row)
    return tuple(rows)

"""Flow labels: binary (normal / attack) and the NSL-KDD five categories, from a table's label column."""

from __future__ import annotations

import numpy as np

from .vocabulary import _norm

CATEGORIES_5 = ("normal", "DoS", "Probe", "R2L", "U2R")
#: NSL-KDD attack name -> category (Tavallaee et al. 2009 / the KDD'99 task description; ``worm`` follows the common
#: DoS assignment). Training and test files together use 39 attack names, all listed.
ATTACK_CATEGORY: dict[str, str] = {
    **dict.fromkeys(("back", "land", "neptune", "pod", "smurf", "teardrop", "apache2", "udpstorm", "processtable",
                     "mailbomb", "worm"), "DoS"),
    **dict.fromkeys(("satan", "ipsweep", "nmap", "portsweep", "mscan", "saint"), "Probe"),
    **dict.fromkeys(("guess_passwd", "ftp_write", "imap", "phf", "multihop", "warezmaster", "warezclient", "spy",
                     "xlock", "xsnoop", "snmpguess", "snmpgetattack", "httptunnel", "sendmail", "named"), "R2L"),
    **dict.fromkeys(("buffer_overflow", "loadmodule", "rootkit", "perl", "sqlattack", "xterm", "ps"), "U2R"),
}


#: the flow tasks: binary (normal / benign vs any other label) and the five NSL-KDD categories
TASKS = ("binary", "5class")
_TASKS_HELP = ("'binary' (normal / benign vs every other label, whatever your label set) or '5class' (normal, DoS, "
               "Probe, R2L, U2R from NSL-KDD / KDD Cup '99 attack names, gatedzoo.data.flows.ATTACK_CATEGORY, or from "
               "those category names themselves). A class per label of your own (DDoS, PortScan, ...) is not a flow "
               "task: map your labels onto the five categories first, e.g. df['Label'] = df['Label'].replace("
               "{'DDoS': 'DoS', 'PortScan': 'Probe'}), or train 'binary'")


def check_task(task: str) -> None:
    """Refuse a ``task`` outside :data:`TASKS`, saying what each one reads and how to map another label set."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}; use {_TASKS_HELP}.")


def label_column(df):
    """The name of the label column of ``df`` (pandas.DataFrame): the first column named ``label``, else ``attack``,
    with spaces and case ignored (CICFlowMeter writes ``" Label"``); `None` when there is none."""
    names: dict[str, str] = {}
    for c in df.columns:
        names.setdefault(_norm(c), c)
    return next((names[k] for k in ("label", "attack") if k in names), None)


def _label_strings(col):
    """Label strings of a label column (pandas.Series ``[N]``): spaces and KDD Cup '99's trailing ``.``
    (``normal.``, ``smurf.``) removed."""
    return col.astype(str).str.strip().str.rstrip(".").str.strip()


def attack_names(df) -> np.ndarray:
    """The raw label string of every row (``"normal"``, ``"neptune"``, ...), stripped of spaces and of KDD Cup '99's
    trailing ``.``; ``[N]`` object array.

    Raises:
        ValueError: no label column (``label``, ``Label``, ``attack``; spaces and case ignored).
    """
    col = label_column(df)
    if col is None:
        raise ValueError("the table has no label column (one of 'label', 'Label', 'attack').")
    return _label_strings(df[col]).to_numpy(object)


def labels_of(df, fmt: str, task: str) -> np.ndarray:
    """Integer labels ``[N]`` int64: binary 0 = normal / benign, 1 = attack; ``"5class"`` indexes
    :data:`CATEGORIES_5`, from an attack name of :data:`ATTACK_CATEGORY` or a category name (``DoS``, ``Probe``,
    ``R2L``, ``U2R``). Label strings are read without surrounding spaces and without KDD Cup '99's trailing ``.``
    (``normal.`` is normal, ``smurf.`` is ``smurf``); the label column is found with spaces and case ignored.

    Raises:
        ValueError: no label column, a task outside :data:`TASKS`, or (5-class) a label without a category.
    """
    col = label_column(df)
    if col is None:
        raise ValueError(f"the {fmt} table has no label column (one of 'label', 'Label', 'attack'); "
                         "add it, or score unlabelled flows with gatedzoo.tasks.flows.predict_table.")
    check_task(task)
    raw = _label_strings(df[col])
    benign = raw.str.lower().isin(("normal", "benign", "0"))
    if task == "binary":
        return (~benign).to_numpy(np.int64)
    # a table whose labels are already categories (mapped by the user) reads as they are
    named = {c.lower(): c for c in CATEGORIES_5[1:]}
    cats = raw.map(lambda s: "normal" if s.lower() in ("normal", "benign", "0")
                   else ATTACK_CATEGORY.get(s, named.get(s.lower())))
    unknown = sorted(set(raw[cats.isna()]))
    if unknown:
        raise ValueError(f"labels without a 5-class category: {unknown[:10]}. task='5class' reads NSL-KDD / KDD Cup "
                         "'99 attack names (gatedzoo.data.flows.ATTACK_CATEGORY) and the category names DoS, Probe, "
                         "R2L, U2R: map your labels onto those first, e.g. df['Label'] = df['Label'].replace("
                         "{'DDoS': 'DoS', 'PortScan': 'Probe'}) (normal traffic: 'normal' or 'benign'), or use "
                         "task='binary'.")
    return cats.map({c: i for i, c in enumerate(CATEGORIES_5)}).to_numpy(np.int64)

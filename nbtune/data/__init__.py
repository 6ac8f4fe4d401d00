"""The data stages: load (sources, formats, schema detection) -> clean -> tokens.

The canonical row schema every stage after loading relies on
--------------------------------------------------------------
A loaded dataset is a `datasets.Dataset` with

* ``row_id`` (int64): the row's position in the loaded data. It never changes,
  so a row removed by cleaning can always be traced back to its source.
* for data of format ``"text"``: a ``text`` column (str);
* for formats ``"chat"``, ``"instruction"`` and ``"prompt_completion"``: a
  ``messages`` column, a list of ``{"role": str, "content": str}`` with roles
  ``system`` / ``user`` / ``assistant``. Instruction rows become
  ``[user: instruction (+ blank line + input), assistant: output]`` and
  prompt/completion rows the prompt's turns then the completion's (a string
  is one user / one assistant turn); the detected format is kept by the
  Session, so reports still say what was found.
* data with tool calls: messages also have ``tool_calls`` (a list of
  ``{"id", "type", "function": {"name", "arguments"}}``, arguments as a JSON
  string), ``tool_call_id`` and ``name`` (None where unused), roles include
  ``tool``, and a ``tools`` column holds each row's tool schemas as JSON text.
* for ``"preference"``, ``"unpaired_preference"`` and ``"stepwise"``: the
  format's own columns as loaded (``prompt`` / ``chosen`` / ``rejected``;
  ``prompt`` / ``completion`` / ``label``; ``prompt`` / ``completions`` /
  ``labels``; message lists canonicalised as above), ``messages`` = what
  supervised fine-tuning would train on, and, once ``load(..., sft=...)``
  chose, a bool ``sft`` column marking the rows it trains on.
"""


def column(dataset, name: str) -> list:
    """All values of one column as a Python list, fast.

    In datasets 5, `dataset[name]` is a lazy Column whose iteration formats one
    row at a time (~30 µs each); reading the Arrow column directly is ~100x faster.
    """
    return dataset.with_format("arrow")[name].to_pylist()


def column_batches(dataset, name: str, batch_size: int = 10_000):
    """The values of one column as Python lists of at most `batch_size`, read batch by batch from Arrow.

    For big datasets: only one batch of values is in Python memory at a time
    (`column` makes one list of them all). Index mappings (select, filter) are honoured.
    """
    table = dataset.with_format("arrow")
    for start in range(0, len(dataset), batch_size):
        yield table[start : start + batch_size].column(name).to_pylist()


def column_array(dataset, name: str):
    """A numeric column as one numpy array (no Python object per value)."""
    import numpy as np

    values = dataset.with_format("arrow")[name]
    return np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)


def text_lengths(dataset, batch_size: int = 10_000):
    """(characters, words) of each row's document text as two int64 numpy arrays, computed batch by batch.

    The document text is a row's `text`, or its messages' contents joined by
    newlines; words are `str.split()` pieces. Memory holds one batch of texts,
    not the column, so reports can draw length histograms of big datasets.
    """
    import numpy as np

    name = "text" if "text" in dataset.column_names else "messages"
    chars = np.zeros(len(dataset), dtype=np.int64)
    words = np.zeros(len(dataset), dtype=np.int64)
    at = 0
    for values in column_batches(dataset, name, batch_size):
        for value in values:
            text = value if name == "text" else "\n".join(m["content"] or "" for m in value)
            chars[at] = len(text)
            words[at] = len(text.split())
            at += 1
    return chars, words

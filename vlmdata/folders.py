"""The names of the files in vlmdata's output folders, in one place (docs/architecture.md, "Token shards")."""

METADATA_FILE = "vlmdata.json"  # what made an output folder, and its summary: every stage's, train's too
REJECTS_FILE = "rejects.jsonl"  # one JSON line per rejected row
STATE_FILE = "state.json"  # written last by `datasets`' layout: its presence marks a finished output
INFO_FILE = "dataset_info.json"  # the features, read by `load_from_disk` beside STATE_FILE
JOB_FILE = ".vlmdata-job"  # beside the work units of an output being written: the job it belongs to (Stage.job_key)
PROCESSOR_DIR = "processor"  # the processor token shards were made with
PARTIAL_SUFFIX = ".partial"  # OUT.partial: the output being written
PREVIOUS_SUFFIX = ".previous"  # OUT.previous: the output being replaced

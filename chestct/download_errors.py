"""The exceptions of the ``download`` stage, shared by the modules that fetch and unpack the dataset."""


class DownloadError(Exception):
    """A download that failed for a reason the user can fix, described in the message."""


class CredentialsError(DownloadError):
    """Kaggle credentials that are missing or that Kaggle rejected."""


class UnsafeArchiveError(DownloadError):
    """A zip entry that could write outside the extraction folder, or an archive too large."""


class SourceNotFoundError(DownloadError, FileNotFoundError):
    """A local ``data.source`` path that does not exist."""

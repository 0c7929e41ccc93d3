"""Applier settings from the environment (on top of the chassis' ServiceSettings).

Lists are comma-separated (``AUTOPACK_APPLIER_ALLOWED_COMMANDS=python,pytest,ruff``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from autopack_common.settings import ServiceSettings
from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from autopack_applier.checks import DEFAULT_ALLOWED_COMMANDS


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class ApplierSettings(ServiceSettings):
    """Where workspaces live, what is protected, which checks may run."""

    workspace_root: Path | None = Field(default=None, alias="AUTOPACK_APPLIER_WORKSPACE_ROOT")
    # Extra paths no Apply may write, on top of .git/ and .autopack/: files, "dir/" prefixes
    # or globs ("*.pem").
    protected_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="AUTOPACK_APPLIER_PROTECTED_PATHS"
    )
    # Subtrees an Apply may write although a protected rule covers them (".autopack/reports/");
    # VCS internals can never be allowed.
    allowed_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="AUTOPACK_APPLIER_ALLOWED_PATHS"
    )
    # Deletion Safeguards (net deleted lines = removed - added): tag the previous state from
    # `savepoint`, notify from `notify`, block for approval above `block`.
    deletion_savepoint_lines: int = Field(default=50, gt=0, alias="AUTOPACK_APPLIER_DELETION_SAVEPOINT_LINES")
    deletion_notify_lines: int = Field(default=100, gt=0, alias="AUTOPACK_APPLIER_DELETION_NOTIFY_LINES")
    deletion_block_lines: int = Field(default=200, gt=0, alias="AUTOPACK_APPLIER_DELETION_BLOCK_LINES")
    # Savepoints of a run kept as rollback targets (the base commit always is); at least 2 so
    # the savepoint before the latest apply can always be restored.
    savepoint_retention: int = Field(default=3, ge=2, alias="AUTOPACK_APPLIER_SAVEPOINT_RETENTION")
    allowed_commands: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ALLOWED_COMMANDS), alias="AUTOPACK_APPLIER_ALLOWED_COMMANDS"
    )
    # Directories PrepareWorkspace may copy from; empty allows any local path.
    source_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, alias="AUTOPACK_APPLIER_SOURCE_ROOTS"
    )
    # Extra environment variable names checks inherit (credential-like names are refused).
    check_env: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="AUTOPACK_APPLIER_CHECK_ENV"
    )
    check_timeout_seconds: int = Field(default=300, gt=0, alias="AUTOPACK_APPLIER_CHECK_TIMEOUT_SECONDS")
    max_check_timeout_seconds: int = Field(
        default=3600, gt=0, alias="AUTOPACK_APPLIER_MAX_CHECK_TIMEOUT_SECONDS"
    )
    # How long an RPC waits for another one on the same run (its deadline may cut it shorter).
    lock_timeout_seconds: float = Field(default=60.0, gt=0, alias="AUTOPACK_APPLIER_LOCK_TIMEOUT_SECONDS")
    max_read_files: int = Field(default=5000, gt=0, alias="AUTOPACK_APPLIER_MAX_READ_FILES")

    _split = field_validator(
        "protected_paths", "allowed_paths", "allowed_commands", "source_roots", "check_env", mode="before"
    )(_split_list)

    @model_validator(mode="after")
    def _ordered_deletion_tiers(self) -> ApplierSettings:
        """The tiers must nest: tag <= notify <= block, or a deletion could block untagged."""
        if not self.deletion_savepoint_lines <= self.deletion_notify_lines <= self.deletion_block_lines:
            raise ValueError(
                "AUTOPACK_APPLIER_DELETION_SAVEPOINT_LINES <= AUTOPACK_APPLIER_DELETION_NOTIFY_LINES <= "
                "AUTOPACK_APPLIER_DELETION_BLOCK_LINES must hold"
            )
        return self

    def resolved_workspace_root(self) -> Path:
        """Absolute, symlink-free workspace root (``<data_dir>/workspaces`` by default)."""
        root = self.workspace_root or self.data_dir / "workspaces"
        return root.expanduser().resolve()

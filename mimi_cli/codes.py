"""The codes file: a pickle-free ``.npz`` that describes itself.

Keys (all loadable with ``np.load(path, allow_pickle=False)``):

=====================  ===========  ================================================
key                    type         meaning
=====================  ===========  ================================================
``codec``              str          ``mimi`` or ``encodec-24khz`` (files without it are Mimi's)
``codes``              uint16       ``[channels=1, K, frames]``, each < ``codebook_size``
``format_version``     int          1
``sample_rate``        int          24000, the codec's rate
``frame_rate``         float        12.5 (Mimi) or 75 (EnCodec) frames per second
``codebook_size``      int          2048 (Mimi) or 1024 (EnCodec)
``num_samples``        int          length at the codec's rate before padding to whole frames
``source_sample_rate`` int          rate of the file that was encoded
``source_channels``    int          its channel count (downmixed to mono)
``weights_id``         str          ``sha256:`` + 16 hex digits of the weights file
=====================  ===========  ================================================
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.errors import InvalidCodesError
from mimi_cli.fileio import Target, atomic_output
from mimi_cli.models import CODECS, DEFAULT_CODEC, codec_spec
from mimi_cli.models.config import CodecConfig

FORMAT_VERSION = 1
_INT_KEYS = ("format_version", "sample_rate", "codebook_size", "num_samples", "source_sample_rate", "source_channels")
KEYS = ("codes", "frame_rate", "weights_id", *_INT_KEYS)  # required; "codec" is optional (added later)


@dataclass
class CodesFile:
    codes: np.ndarray  # uint16 [1, K, F]
    num_samples: int
    source_sample_rate: int
    source_channels: int
    weights_id: str
    sample_rate: int
    frame_rate: float
    codebook_size: int
    codec: str = DEFAULT_CODEC
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_codes(cls, codes: np.ndarray, config: CodecConfig, num_samples: int, source_sample_rate: int,
                   source_channels: int, weights_id: str) -> CodesFile:
        """Wrap model codes ``[K, F]`` with the metadata decode needs."""
        return cls(codes=codes.astype(np.uint16)[None], num_samples=num_samples,
                   source_sample_rate=source_sample_rate, source_channels=source_channels,
                   weights_id=weights_id, sample_rate=config.sample_rate, frame_rate=config.frame_rate,
                   codebook_size=config.codebook_size, codec=config.name)

    @property
    def num_codebooks(self) -> int:
        return self.codes.shape[1]

    @property
    def num_frames(self) -> int:
        return self.codes.shape[2]

    def save(self, path: Target, replace: bool = False) -> None:
        """Write atomically through :func:`mimi_cli.fileio.atomic_output` ("-": standard output)."""
        arrays = {key: np.asarray(getattr(self, key)) for key in (*KEYS, "codec")}
        with atomic_output(path, replace) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> CodesFile:
        """Read and validate a codes file against its codec's config; every problem is an InvalidCodesError."""
        if not path.exists():
            raise InvalidCodesError(f"{path} does not exist")
        if path.is_dir():
            raise InvalidCodesError(f"{path} is a directory; give a .npz codes file")
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise InvalidCodesError(f"{path} is a .npy array, not a codes file (.npz written by mimi encode)")
        if not magic.startswith(b"PK"):
            raise InvalidCodesError(f"{path} is not a codes file (expected the .npz archive written by mimi encode)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [key for key in KEYS if key not in npz.files]
                if missing:
                    raise InvalidCodesError(f"{path} is not a complete codes file: missing {', '.join(missing)}")
                arrays = {key: npz[key] for key in KEYS}
                arrays["codec"] = npz["codec"] if "codec" in npz.files else np.array(DEFAULT_CODEC)
        except InvalidCodesError:
            raise
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise InvalidCodesError(f"{path} contains pickled objects, which are never loaded; "
                                        "write codes as plain arrays") from None
            raise InvalidCodesError(f"{path} is not a readable codes file ({exc})") from None
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InvalidCodesError(f"{path} is not a readable codes file ({exc})") from None
        return cls._validated(path, arrays)

    @classmethod
    def _validated(cls, path: Path, a: dict[str, np.ndarray]) -> CodesFile:
        def fail(problem: str) -> InvalidCodesError:
            return InvalidCodesError(f"{path}: {problem}")

        if a["codec"].shape != () or a["codec"].dtype.kind != "U" or str(a["codec"]) not in CODECS:
            raise fail(f"codec must name one of {', '.join(CODECS)}, got {a['codec']!r}")
        config = codec_spec(str(a["codec"])).config()

        for key in (*_INT_KEYS, "frame_rate", "weights_id"):
            if a[key].shape != ():
                raise fail(f"{key} must be a single value, got shape {list(a[key].shape)}")
        for key in _INT_KEYS:
            if not np.issubdtype(a[key].dtype, np.integer):
                raise fail(f"{key} must be an integer, got {a[key].dtype}")
        version = int(a["format_version"])
        if version != FORMAT_VERSION:
            raise fail(f"format_version {version} is not supported (this mimi-cli reads version {FORMAT_VERSION}); "
                       "upgrade mimi-cli")
        expected = {"sample_rate": config.sample_rate, "codebook_size": config.codebook_size}
        for key, value in expected.items():
            if int(a[key]) != value:
                raise fail(f"{key} is {int(a[key])}, but {config.display_name} uses {value}")
        if not np.issubdtype(a["frame_rate"].dtype, np.number) or float(a["frame_rate"]) != config.frame_rate:
            raise fail(f"frame_rate is {a['frame_rate']}, but {config.display_name} uses {config.frame_rate}")
        if a["weights_id"].dtype.kind != "U":
            raise fail(f"weights_id must be a string, got {a['weights_id'].dtype}")
        codes = a["codes"]
        if codes.dtype != np.uint16:
            raise fail(f"codes must be uint16, got {codes.dtype}")
        if codes.ndim != 3 or codes.shape[0] != 1:
            raise fail(f"codes must have shape [1, K, frames], got {list(codes.shape)}")
        if not 1 <= codes.shape[1] <= config.num_codebooks:
            raise fail(f"codes have {codes.shape[1]} codebooks; expected 1..{config.num_codebooks}")
        if codes.size and int(codes.max()) >= config.codebook_size:
            raise fail(f"codes contain {int(codes.max())}, but codes must be below {config.codebook_size}")
        frames, num_samples = codes.shape[2], int(a["num_samples"])
        if not (frames - 1) * config.frame_size < num_samples <= frames * config.frame_size:
            raise fail(f"num_samples {num_samples} does not fit {frames} frames of {config.frame_size} samples")
        return cls(codes=codes, num_samples=num_samples, source_sample_rate=int(a["source_sample_rate"]),
                   source_channels=int(a["source_channels"]), weights_id=str(a["weights_id"]),
                   sample_rate=int(a["sample_rate"]), frame_rate=float(a["frame_rate"]),
                   codebook_size=int(a["codebook_size"]), codec=config.name, format_version=version)

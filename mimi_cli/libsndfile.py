"""Files libsndfile decodes (python-soundfile's ``SoundFile``), read as one unbroken pass of their decoder.

python-soundfile seeks after every read, to the position it counted (``SoundFile._cdata_io``), and libsndfile
hands every seek to the codec, even one to where it already is. Its MP3 codec (mpg123) then decodes afresh
from a frame near that place, without the bytes earlier frames left in the bit reservoir: a frame or two
decode to noise, and mpg123 prints "part2_3_length (…) too large for available bit count (…)". A 16 kHz
speech MP3 read in blocks of 4,096 samples had 52 such places, up to 0.39 off full scale; read in blocks
of 65,536 (how a whole file was read), a 22 kHz MP3 at 8 kbps had 314 wrong samples. Seeking to a place
(a manifest's span) did the same in 7 of 40 seeks into that file, and an Opus file differed in the last
bits after 1 seek of 60 (its decoder's memory reaches back past the 80 ms libsndfile decodes first). The same
seeks made a FLAC stream whose header gives no length fail part way ("Internal psf_fseek() failed")::

    frames   … | n-2 | n-1 |  n  | n+1 | …        a frame's bits may start in the frames before it
    seek to n        ───────►│                    mpg123 starts at n without n-1's bytes: noise
    seek to n - 1 s  ►───────────────────►│       decoded forward from a second earlier: exact

So here a seek to where the file already is does nothing, and a seek elsewhere in a file whose decoder
carries state from frame to frame goes one second earlier and decodes forward, dropping that second: the
samples are those a read from the start gives. A second holds the furthest an MP3 frame's bits reach back
(255 bytes of reservoir in MPEG-2, 511 in MPEG-1: at worst 8 kbps at 24 kHz, 23 frames of 576 samples, 0.55 s)
and the frame and filter bank after it; spans into 8 kbps MP3s at 8–24 kHz were measured exact (to 1.2e-7, how
reads of other sizes round).
"""
import io
import os

import soundfile

# Formats whose decoder carries state from one frame to the next (libsndfile's names): MP3's bit reservoir,
# Vorbis's and Opus's overlapping windows and Opus's predictors.
STATEFUL_FORMATS = ("MP3", "OGG")
REWIND_SECONDS = 1.0


class SoundFile(soundfile.SoundFile):
    """A ``soundfile.SoundFile`` (for reading) whose seeks leave its decoder's state as a read from the start
    would have it; a file object (bytes held in memory) is read through :class:`_LikeLseek`."""

    def __init__(self, file, *args, **kwargs):
        if not isinstance(file, (str, bytes, int, os.PathLike)):
            file = _LikeLseek(file)
        super().__init__(file, *args, **kwargs)

    def seek(self, frames: int, whence: int = soundfile.SEEK_SET) -> int:
        here = super().seek(0, soundfile.SEEK_CUR)  # libsndfile's own count, without a seek
        if whence == soundfile.SEEK_CUR:
            frames, whence = here + frames, soundfile.SEEK_SET
        if whence != soundfile.SEEK_SET:
            return super().seek(frames, whence)
        if frames == here:
            return here
        rewind = round(REWIND_SECONDS * self.samplerate) if self.format in STATEFUL_FORMATS else 0
        start = super().seek(max(0, frames - rewind))
        while start < frames:  # decoded and dropped, in blocks (a long rewind of a many-channel file)
            dropped = len(self.read(min(frames - start, 1 << 16), dtype="float32"))
            if not dropped:  # the audio ends before ``frames`` (its length was estimated): libsndfile's own seek
                return super().seek(frames)
            start += dropped
        return start


class _LikeLseek:
    """A file object as libsndfile's virtual I/O should see it: a seek to before the start fails as ``lseek``
    does, returning -1, where a file object raises. python-soundfile's seek callback (``file.seek`` then
    ``file.tell()``) runs inside libsndfile's C code, so what it raises cannot reach the caller: Python prints
    it with a traceback ("Exception ignored from cffi callback … negative seek value -1": a damaged AIFF chunk
    sends libsndfile's chunk walk back before the start) and libsndfile carries on. A file on disk opened by name
    gets the -1 from the system; bytes held in memory (a tar member, a dataset's row) now get it too."""

    def __init__(self, f):
        self._f, self._failed = f, False

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self._f.seek(offset, whence)
        except (OSError, ValueError):
            self._failed = True  # the position is unchanged, as lseek leaves it; the tell() that follows says -1
            return -1

    def tell(self) -> int:
        if self._failed:
            self._failed = False
            return -1
        return self._f.tell()

    def __getattr__(self, name: str):
        return getattr(self._f, name)

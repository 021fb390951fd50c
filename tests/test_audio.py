"""Audio reading, downmixing, resampling and writing."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import SAMPLE_AUDIO, SHARED, damaged_mp3s, libsndfile_reads, lying_flac, sparse_wav

from mimi_cli.audio import Audio, read_audio, resample, to_mono, write_audio
from mimi_cli.errors import InvalidAudioError, OutputExistsError
from mimi_cli.fileio import check_output


def sine(freq: float, rate: int, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


@pytest.mark.parametrize("name,rate,channels", [
    ("speech_16k_mono.wav", 16000, 1), ("speech_44k_stereo.wav", 44100, 2), ("music_24k.flac", 24000, 1)])
def test_sample_audio_reads(name, rate, channels):
    audio = read_audio(SAMPLE_AUDIO / name)
    assert (audio.sample_rate, audio.channels) == (rate, channels)
    assert audio.duration > 3 and audio.samples.dtype == np.float32
    assert 0.01 < np.sqrt(np.mean(audio.samples**2)) < 0.5
    # a name as str: it was taken for the file's bytes ("a bytes-like object is required, not 'str'")
    np.testing.assert_array_equal(read_audio(str(SAMPLE_AUDIO / name)).samples, audio.samples)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_resampling_keeps_pitch_and_duration(rate):
    x = sine(440.0, rate, 2.0)
    y = resample(x, rate, 24000)
    assert len(y) == 48000 and y.dtype == np.float32
    assert abs(dominant_frequency(y[2000:-2000], 24000) - 440.0) < 2
    assert abs(np.sqrt(np.mean(y[2000:-2000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_a_resampling_beyond_the_memory_is_refused_before_any_work(monkeypatch):
    """`mimi run --stream` of a 1 Hz file of 100,000 samples at --sample-rate 768000 asked resample_poly for 922
    GB (a MemoryError, or on a machine that grants it lazily, the kernel's kill). The size is known beforehand:
    refused, saying so. What fits is resampled as before."""
    from scipy.signal import resample_poly

    from mimi_cli import errors

    monkeypatch.setattr(errors, "usable_memory", lambda: 1 << 30)  # a 1 GiB machine
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 100)).astype(np.float32)
    with pytest.raises(InvalidAudioError, match=r"^resampling 100\.0 s of audio from 1 Hz to 768,000 Hz would take "
                                                r"about 1\.2 GB, more than this machine's 1\.1 GB: give shorter audio"):
        resample(x, 1, 768_000)  # 2 × 76.8 million samples, and one row's result as SciPy gives it
    np.testing.assert_array_equal(resample(x, 1, 24_000), resample_poly(x, 24_000, 1, axis=-1).astype(np.float32))


_HELD = """
import resource, sys
import numpy as np
from mimi_cli.audio import open_audio, read_open, resample, rescaled, scipy_signal, write_audio
case, path = sys.argv[1:]
scipy_signal()  # loaded before, not counted
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
pcm = np.full((8, 2_880_000), 0.5, np.float32) if case != "read" else None  # 1 min of 8 channels at 48 kHz
start = max(rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
if case == "read":
    with open_audio(path) as f:
        result = read_open(path, f, lambda seconds: None).samples
elif case == "resample":
    result = resample(pcm, 48000, 24000)
elif case == "rescale":
    pcm[0, 0] = 1.5
    result = rescaled(pcm)[0]
else:
    write_audio(path, pcm, 48000)
    result = pcm
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start) / result.nbytes)
"""


@pytest.mark.parametrize("case, most", [("read", 1.6), ("resample", 1.3), ("write", 0.3), ("rescale", 0.3)])
def test_audio_in_memory_is_held_once(case, most, tmp_path):
    """Long audio of many channels was held two or three times over: read in blocks that were then joined (the
    blocks and the whole at once), resampled all channels at once (SciPy's result, then its float32 copy),
    written after clipping it all (a copy, and another of its magnitudes), scaled by --rescale (its magnitudes,
    then a scaled copy): 2.0, 2.0, 1.25 and 1.0 times its size more. Now reading and resampling grow memory by
    about the audio's own size (the result's), writing by a block's, scaling by nothing, as the batch check
    counts it; joined blocks are let go as they are copied, which the allocator returns to the system as it
    may (1.4 here)."""
    path = sparse_wav(tmp_path / "in.wav", 8, 48000, 60) if case == "read" else tmp_path / "out.wav"
    done = subprocess.run([sys.executable, "-c", _HELD, case, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < most, f"{case} grew memory {float(done.stdout):.2f} times the audio's size"


def test_downmix_is_the_channel_mean():
    left, right = sine(300, 24000, 0.5), sine(500, 24000, 0.5)
    mono = to_mono(Audio(np.stack([left, right], axis=1), 24000), 24000)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)


def test_write_clips_and_reports(tmp_path):
    x = np.array([0.0, 0.5, 1.5, -2.0], np.float32)
    path = tmp_path / "o.wav"
    assert write_audio(path, x, 24000) == 2
    back, rate = sf.read(path, dtype="float32")
    assert rate == 24000 and back.max() <= 1 and back.min() >= -1 and abs(back[1] - 0.5) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.wav"]
    # names as str and bytes, from Python: "'str' object has no attribute 'suffix'"; checked as a Path would be
    assert write_audio(str(tmp_path / "s.flac"), x, 24000) == write_audio(os.fsencode(tmp_path / "b.wav"), x, 24000)
    np.testing.assert_array_equal(sf.read(tmp_path / "s.flac", dtype="float32")[0], back)
    with pytest.raises(OutputExistsError, match="o.wav already exists"):
        check_output(str(path), replace=False)


def test_write_refuses_unknown_extension(tmp_path):
    with pytest.raises(InvalidAudioError, match=".xyz"):
        write_audio(tmp_path / "o.xyz", np.zeros(10, np.float32), 24000)
    assert list(tmp_path.iterdir()) == []


def test_reads_mp3_and_ogg(tmp_path):
    x = sine(440, 24000, 1.0)
    for fmt in ("OGG", "MP3"):
        if fmt not in sf.available_formats():
            continue
        path = tmp_path / f"a.{fmt.lower()}"
        sf.write(path, x, 24000, format=fmt)
        audio = read_audio(path)
        assert abs(audio.duration - 1.0) < 0.1 and abs(dominant_frequency(audio.samples[:, 0], 24000) - 440) < 3


@pytest.mark.skipif(not (SHARED / "audio").is_dir(), reason="../shared/audio is not present")
def test_a_wav_whose_format_tag_no_decoder_knows(tmp_path):
    """Format tag 0 ("unknown"): libsndfile refuses it, and FFmpeg (the ffmpeg extra) opens the file with an audio
    stream but no decoder for it (PyAV's codec_context is None): a one-line error from both, not AttributeError."""
    pytest.importorskip("av")
    pcm, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32", frames=1600)
    path = tmp_path / "tag0.wav"
    sf.write(path, pcm, rate, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[20:22] = b"\0\0"  # the fmt chunk's format tag (1: PCM)
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidAudioError, match="Malformed 'fmt ' chunk.*FFmpeg: the audio stream has no decoder"):
        read_audio(path)


def test_the_first_bytes_of_audio_pass_the_check_of_a_pipes_head(tmp_path):
    """What fileio.readable asks of a pipe's first MiB before keeping the rest (check_audio_head): every format
    the readers take passes on a part of its first bytes, as a pipe's head is. WAV, AIFF, FLAC, Ogg and MP3
    with an ID3 tag by their signatures; AU, CAF, W64 and an MP3 of bare frames by libsndfile, ADTS AAC, WebM
    and Matroska by FFmpeg, MP4 by its "ftyp" box (its index may stand at its end). What no reader opens
    is refused with the error the whole file gets, naming what it holds."""
    from conftest import ffmpeg_file

    from mimi_cli.audio import check_audio_head

    pcm = (np.random.default_rng(0).standard_normal(48000 * 4) * 0.1).astype(np.float32)
    formats = ["wav", "aiff", "flac", "ogg", "mp3", "au", "caf", "w64"]
    for suffix in formats:
        sf.write(tmp_path / f"x.{suffix}", pcm, 48000)
    assert (tmp_path / "x.mp3").read_bytes()[:1] == b"\xff"  # bare frames: no ID3 tag to know it by
    if importlib.util.find_spec("av"):
        for suffix, codec in (("aac", "aac"), ("m4a", "aac"), ("webm", "libopus"), ("mka", "pcm_s16le")):
            ffmpeg_file(tmp_path / f"x.{suffix}", pcm, rate=48000, codec=codec)
            formats.append(suffix)
    for suffix in formats:
        data = (tmp_path / f"x.{suffix}").read_bytes()
        check_audio_head(data[:len(data) // 2], f"x.{suffix}")  # no error
        read_audio(tmp_path / f"x.{suffix}")  # (each is a file the readers take whole)
    np.savez(tmp_path / "codes.npz", codes=np.zeros((1, 8, 10), np.uint16))
    for head, said in ((np.random.default_rng(1).bytes(1 << 16), "give a WAV, FLAC"), (bytes(1 << 16), "give a WAV"),
                       (b"y\n" * (1 << 15), "it holds text, not audio"),
                       ((tmp_path / "codes.npz").read_bytes(), "`mimi decode` reads codes")):
        with pytest.raises(InvalidAudioError, match="^cannot read standard input as audio .*" + re.escape(said)):
            check_audio_head(head, "standard input")


@pytest.mark.parametrize("stack_kb", [None, 128])
def test_a_long_ogg_vorbis_file_is_written(tmp_path, stack_kb):
    """`mimi decode long.npy -o long.ogg` of 92 s or more at 24 kHz ended in a segmentation fault: libvorbis
    takes stack room for every sample of one write (2.2 M samples: 8.8 MB, past the 8 MB stack); so did blocks
    of 65,536 samples in a stack of 128 KB (`ulimit -s 128`, a musl thread's). Run in a child process, which
    that crash ends."""
    import resource
    import subprocess

    def small_stack():
        if stack_kb is not None:
            resource.setrlimit(resource.RLIMIT_STACK, (stack_kb << 10, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    path = tmp_path / "long.ogg"
    child = ("import numpy as np; from mimi_cli.audio import write_audio; "
             f"write_audio({str(path)!r}, np.sin(np.arange(2_200_000, dtype=np.float32) / 9) / 2, 24000)")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                          preexec_fn=small_stack)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert sf.info(path).frames == 2_200_000


_SCIPY_WITH_ROOM = """
import resource, sys
import numpy as np
from mimi_cli.audio import resample
size = next(int(line.split()[1]) << 10 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + (int(sys.argv[1]) << 20), resource.RLIM_INFINITY))
try:
    print(resample(np.zeros(16000, np.float32), 16000, 24000).shape)
except MemoryError as exc:
    print("MemoryError:", exc)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the address space's size from /proc")
@pytest.mark.parametrize("room_mb, said", [(96, "MemoryError: no room to load SciPy: Cannot allocate memory"),
                                           (400, "(24000,)")])
def test_scipy_loads_only_with_room_for_it(room_mb, said):
    """SciPy's own OpenBLAS, refused the 32 MB buffer it maps as it loads (ulimit -v), tries again for ever: with
    64 to 112 MB of address space left, the first resampling hung, deaf to Ctrl-C and SIGTERM. Now SciPy is
    loaded once 256 MB can be mapped, else the refusal is a MemoryError, the run's "out of memory" line."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _SCIPY_WITH_ROOM, str(room_mb)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == said, done.stderr[-500:]


def test_shared_speech_clips_read():
    for path in sorted((SHARED / "audio").glob("*.wav")):
        audio = read_audio(path)
        assert audio.sample_rate == 16000 and audio.channels == 1 and audio.duration > 1


@pytest.mark.parametrize("rates", [(16000, 24000), (44100, 24000), (48000, 24000), (8000, 24000),
                                   (22050, 24000), (24000, 16000), (24000, 44100), (24000, 24000)])
def test_stream_resampler_equals_one_shot(rates):
    from mimi_cli.audio import StreamResampler

    rng = np.random.default_rng(sum(rates))
    x = rng.standard_normal(int(rates[0] * 1.7) + 11).astype(np.float32)
    one_shot = resample(x, *rates)
    for sizes in (rng.integers(1, 5000, 400), [1] * 300 + [len(x)], [len(x)]):
        stream = StreamResampler(*rates)
        bounds = np.cumsum(sizes)
        pieces = [stream.push(p) for p in np.split(x, bounds[bounds < len(x)])] + [stream.flush()]
        np.testing.assert_array_equal(np.concatenate(pieces), one_shot)  # bit for bit


@pytest.mark.parametrize("declared", [0, 0x7FFFF000, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF - 36])
@pytest.mark.parametrize("subtype, channels", [("PCM_16", 1), ("FLOAT", 2), ("PCM_24", 2)])
def test_a_wav_streamed_through_a_pipe_reads_to_its_end(tmp_path, declared, subtype, channels):
    """A WAV writer that cannot seek back to fill in the length (sox or ffmpeg writing to a pipe, a recorder,
    a speech service streaming) leaves 0 or a placeholder in the data chunk's size. A size of 0 read as no
    samples, and sox's placeholder (0x7ffff000) as a truncated file; every sample is read now, as sox and
    FFmpeg read them, from a file and from bytes (a tar member or dataset cell)."""
    from mimi_cli.sources import open_bytes

    samples = np.random.default_rng(channels).uniform(-0.5, 0.5, (4800, channels)).astype(np.float32)
    whole = tmp_path / "whole.wav"
    sf.write(whole, samples, 24000, subtype=subtype)
    data = bytearray(whole.read_bytes())
    field = data.index(b"data") + 4
    data[field:field + 4] = declared.to_bytes(4, "little")
    data[4:8] = (0 if declared == 0 else 0xFFFFFFFF).to_bytes(4, "little")
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(data))
    want = read_audio(whole).samples
    np.testing.assert_array_equal(read_audio(streamed).samples, want)
    with open_bytes(bytes(data), "member.wav") as f:
        np.testing.assert_array_equal(f.read(dtype="float32", always_2d=True), want)


def test_an_empty_wav_with_metadata_after_it_is_still_empty(tmp_path):
    """A recording of no samples whose data chunk (size 0) is followed by another chunk is empty, not
    streamed: the chunk after it is not read as samples."""
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 24000, subtype="PCM_16")
    data = path.read_bytes()
    list_chunk = b"LIST" + (12).to_bytes(4, "little") + b"INFOISFT" + (0).to_bytes(4, "little")
    path.write_bytes(data[:4] + (len(data) - 8 + len(list_chunk)).to_bytes(4, "little") + data[8:] + list_chunk)
    with pytest.raises(InvalidAudioError, match="contains no audio samples"):
        read_audio(path)


@pytest.mark.parametrize("container, subtype", [("AIFF", "PCM_16"), ("AIFF", "FLOAT"), ("AU", "PCM_16"),
                                                ("W64", "PCM_16"), ("RF64", "PCM_24"), ("WAVEX", "PCM_24")])
def test_a_truncated_file_of_any_container_is_refused(tmp_path, container, subtype):
    """libsndfile reads the part of a cut AIFF, AU, W64 or RF64 file that is there, silently: half a file was
    encoded as if whole. Its header's sizes are checked now, as a WAV file's were; the whole file reads."""
    from mimi_cli.sources import open_bytes

    samples = np.random.default_rng(1).uniform(-0.5, 0.5, 48000).astype(np.float32)
    whole = tmp_path / "whole.audio"
    sf.write(whole, samples, 24000, format=container, subtype=subtype)
    assert read_audio(whole).samples.shape == (48000, 1)
    cut = tmp_path / "cut.audio"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InvalidAudioError, match=r"cut.audio is truncated: its header announces [\d,]+ bytes"):
        read_audio(cut)
    with pytest.raises(InvalidAudioError, match="member is truncated"):
        open_bytes(cut.read_bytes(), "member")


def id3v2_tag(padding: int) -> bytes:
    """An ID3v2.4 tag of one title frame and ``padding`` zero bytes (its size in 7-bit "synchsafe" bytes)."""
    frame = b"TIT2" + (6).to_bytes(4, "big") + b"\0\0" + b"\x03title"
    body = frame + bytes(padding)
    size = bytes((len(body) >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + size + body


@pytest.mark.parametrize("container, subtype, tag", [("MP3", "MPEG_LAYER_III", 0), ("MP3", "MPEG_LAYER_III", 3000),
                                                     ("OGG", "VORBIS", 0), ("OGG", "OPUS", 0)])
def test_a_cut_mp3_or_ogg_file_is_refused(tmp_path, container, subtype, tag):
    """libsndfile (mpg123, libvorbis, libopus) decoded the part of a cut MP3 or Ogg file that is there, silently,
    and mpg123 printed a warning of its own on stderr. An MP3 file's Xing header declares the stream's size,
    and each Ogg page its own: a file cut anywhere but between two pages is refused; the whole file reads. (Some
    encoders count an ID3v2 tag in the MP3 stream's size, others not: a cut shorter than the tag is not seen.)"""
    from mimi_cli.sources import open_bytes

    samples = np.random.default_rng(3).uniform(-0.5, 0.5, 72000).astype(np.float32)
    whole = tmp_path / f"whole.{container.lower()}"
    sf.write(whole, samples, 24000, format=container, subtype=subtype)
    before = id3v2_tag(tag) if tag else b""
    data = before + whole.read_bytes()
    whole.write_bytes(data)
    assert abs(read_audio(whole).samples.shape[0] - len(samples)) < 24000 * 0.1
    assert open_bytes(data, "member").read().shape[0] == read_audio(whole).samples.shape[0]
    cut = tmp_path / f"cut.{container.lower()}"
    for end in (len(data) // 3, len(data) // 2, len(data) - len(before) - 7):
        cut.write_bytes(data[:end])
        with pytest.raises(InvalidAudioError, match=rf"cut.{container.lower()} is truncated: its "
                                                    r"(Xing header announces [\d,]+ bytes|last Ogg page)"):
            read_audio(cut)
        with pytest.raises(InvalidAudioError, match="member is truncated"):
            open_bytes(data[:end], "member")


def encoded(samples: np.ndarray, container: str, subtype: str, rate: int = 24000) -> bytes:
    """``samples`` as a file of libsndfile's ``container``, in memory."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def joined_files() -> dict[str, tuple[bytes, int]]:
    """Files libsndfile reads only part of, silently, each with the samples it holds: three MP3 files joined end
    to end (``cat``: the first one's Xing header gives the length), an MP3 file of variable bit rate without its
    Xing header (a length estimated from the first frame's bit rate), three Ogg Vorbis and Opus files joined (a
    chained Ogg file, which the specification allows; libsndfile reads the first link)."""
    rng = np.random.default_rng(5)
    parts = [rng.uniform(-0.5, 0.5, 24000 + 4800 * i).astype(np.float32) for i in range(3)]
    mp3 = encoded(parts[0], "MP3", "MPEG_LAYER_III")
    xing = mp3.index(b"Info" if b"Info" in mp3[:64] else b"Xing")
    # its frame holds the Xing header (120 bytes with the seek table), LAME's (36), then zeros to the next frame
    first_frame = mp3.index(mp3[:2], xing + 156)
    assert first_frame < 1000 and not any(mp3[xing + 156 : first_frame])
    return {
        "joined.mp3": (b"".join(encoded(p, "MP3", "MPEG_LAYER_III") for p in parts), sum(map(len, parts))),
        "no-xing.mp3": (mp3[first_frame:], len(parts[0])),
        "chained.ogg": (b"".join(encoded(p, "OGG", "VORBIS") for p in parts), sum(map(len, parts))),
        "chained.opus": (b"".join(encoded(np.repeat(p, 2), "OGG", "OPUS", 48000) for p in parts),
                         2 * sum(map(len, parts))),
    }


@pytest.mark.parametrize("name", ["joined.mp3", "no-xing.mp3", "chained.ogg", "chained.opus"])
def test_files_libsndfile_reads_in_part_are_read_whole_with_ffmpeg_or_refused(tmp_path, monkeypatch, name):
    """libsndfile stops at the length it takes a file to have: the first file's of files joined end to end (MP3
    or chained Ogg), or an estimate from the first frame's bit rate (a variable bit rate MP3 file without a
    Xing header): a third of the audio was encoded, silently. An MP3 file's frames are counted and an Ogg file's
    streams walked: FFmpeg (the ffmpeg extra) reads such a file whole; without it, it is refused."""
    from mimi_cli.sources import open_bytes

    data, holds = joined_files()[name]
    assert libsndfile_reads(data) < 0.7 * holds  # what happened before
    path = tmp_path / name
    path.write_bytes(data)
    rate = 48000 if name.endswith(".opus") else 24000
    if importlib.util.find_spec("av"):
        audio = read_audio(path)
        # each file's encoder delay and padding, which FFmpeg drops for the first only
        assert audio.sample_rate == rate and abs(len(audio.samples) - holds) < 0.15 * rate * 3
        assert len(open_bytes(data, "member").read()) == len(audio.samples)
    monkeypatch.setitem(sys.modules, "av", None)  # as without the ffmpeg extra
    for read in (lambda: read_audio(path), lambda: open_bytes(data, str(path))):
        with pytest.raises(InvalidAudioError, match=rf"{name} would be read only in part: .* and libsndfile reads "
                                                    r".*[\d.]+ s.*install the ffmpeg extra"):
            read()


def test_a_file_whose_format_changes_part_way_is_refused_or_converted(tmp_path):
    """MP3 files of different channels or rates joined end to end (or a damaged frame header that reads so) went
    to FFmpeg, whose resampler raised "ValueError: Frame does not match AudioResampler setup" at the change:
    the message said nothing of the file. A change of rate or channels is refused, saying where; a change of
    sample format alone is converted as the frames before it were."""
    av = pytest.importorskip("av")
    from mimi_cli.audio import FFmpegAudio

    rng = np.random.default_rng(3)
    mono, stereo = rng.uniform(-0.5, 0.5, 24000).astype(np.float32), rng.uniform(-0.5, 0.5, (24000, 2))
    for name, second, change in (("channels.mp3", encoded(stereo, "MP3", "MPEG_LAYER_III"), "24000 Hz and 2"),
                                 ("rates.mp3", encoded(mono, "MP3", "MPEG_LAYER_III", 16000), "16000 Hz and 1")):
        (tmp_path / name).write_bytes(encoded(mono, "MP3", "MPEG_LAYER_III") + second)
        with pytest.raises(InvalidAudioError, match=rf"^{tmp_path / name} changes at 1\.0\d s from 24000 Hz and 1 "
                                                    rf"channel\(s\) to {change}: it is damaged, or files of "
                                                    "different formats were joined; re-export it as one file$"):
            read_audio(tmp_path / name)
    (tmp_path / "a.mp3").write_bytes(encoded(mono, "MP3", "MPEG_LAYER_III"))
    with av.open(str(tmp_path / "a.mp3")) as container:
        frames = list(container.decode(audio=0))  # planar float, as MP3 decodes
    as_s16 = av.AudioResampler(format="s16", layout="mono", rate=24000)
    changed = frames[:3] + [f for frame in frames[3:6] for f in as_s16.resample(frame)]
    reader = FFmpegAudio(av.open(str(tmp_path / "a.mp3")), "a.mp3")
    reader._packets = iter(changed)
    got = reader.read()
    expected = np.concatenate([f.to_ndarray().reshape(-1) for f in frames[:6]])
    assert got.shape == (len(expected), 1)
    np.testing.assert_allclose(got[:, 0], expected, atol=1 / 32768)  # 16-bit for the last three frames
    reader.close()
    as_stereo = av.AudioResampler(format="fltp", layout="stereo", rate=24000)  # what FFmpeg decodes of such a file
    reader = FFmpegAudio(av.open(str(tmp_path / "a.mp3")), "a.mp3")
    reader._packets = iter(frames[:2] + as_stereo.resample(frames[2]))
    with pytest.raises(InvalidAudioError, match=r"^a\.mp3 changes at 0\.\d\d s from 24000 Hz and 1 channel\(s\) to "
                                                "24000 Hz and 2: it is damaged"):
        reader.read()
    reader.close()


def test_a_length_a_header_declares_is_not_allocated_before_it_is_read(tmp_path):
    """A FLAC file of 0.3 s whose STREAMINFO declares 60 million samples (42 min, within what memory allows):
    the read asked libsndfile for the declared length at once, and 240 MB were allocated (found by
    tests/test_fuzz.py). It reads in blocks, and the file is refused as damaged, in a few MB."""
    import tracemalloc

    data = bytearray(encoded(np.zeros(7200, np.float32), "FLAC", "PCM_16"))
    data[21] &= 0xF0  # STREAMINFO's 36-bit total: its top 4 bits, then 4 bytes (byte 8 of the block on)
    data[22:26] = (60_000_000).to_bytes(4, "big")
    path = tmp_path / "lies.flac"
    path.write_bytes(data)
    assert sf.info(path).frames == 60_000_000
    tracemalloc.start()
    try:
        with pytest.raises(InvalidAudioError, match=r"lies.flac is damaged: it holds 2500\.00 s of audio, and "
                                                    r"decoding it gave 0\.30 s"):
            read_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB"


def test_a_flac_stream_of_unknown_length_is_read_whole(tmp_path, monkeypatch):
    """A FLAC stream written to a pipe (``ffmpeg … -f flac -``) leaves its STREAMINFO's sample count at 0:
    libsndfile took that for 2⁶³ − 1 samples, and the file was refused as too long for memory; read in
    blocks, it failed part way ("Internal psf_fseek() failed": python-soundfile's seek after each read), so
    it went to FFmpeg, or was refused without the ffmpeg extra. Its samples are counted now, and libsndfile
    reads it: whole, as a file, a member, a span and a stream."""
    from mimi_cli.audio import open_audio, read_blocks
    from mimi_cli.sources import Item, open_bytes, open_item

    monkeypatch.setitem(sys.modules, "av", None)  # libsndfile alone, as without the ffmpeg extra
    samples = np.random.default_rng(7).uniform(-0.5, 0.5, 300000).astype(np.float32)
    data = bytearray(encoded(samples, "FLAC", "PCM_16"))
    data[21] &= 0xF0  # STREAMINFO's 36-bit total: its top 4 bits, then 4 bytes (byte 8 of the block on)
    data[22:26] = bytes(4)
    path = tmp_path / "piped.flac"
    path.write_bytes(data)
    assert sf.info(path).frames == (1 << 63) - 1
    with pytest.raises(sf.LibsndfileError, match="psf_fseek"):
        with sf.SoundFile(path) as f:
            while len(f.read(1 << 16)):
                pass
    np.testing.assert_allclose(read_audio(path).samples[:, 0], samples, rtol=0, atol=1 / 32768)
    with open_audio(path) as f:
        assert f.frames == len(samples)
        np.testing.assert_allclose(np.concatenate(list(read_blocks(path, f, 4096)))[:, 0], samples, rtol=0,
                                   atol=1 / 32768)
    with open_bytes(bytes(data), "member") as f:
        assert len(f.read()) == len(samples)
    with open_item(Item("span", str(path), offset=10.0, duration=1.0), "span") as f:
        np.testing.assert_allclose(f.read(dtype="float32"), samples[240000:264000], rtol=0, atol=1 / 32768)
    with pytest.raises(InvalidAudioError, match="offset 13.0 s is past the end of .*piped.flac \\(12.500 s\\)"):
        open_item(Item("span", str(path), offset=13.0), "span")
    with pytest.raises(InvalidAudioError, match="span: duration 1e-05 s is shorter than one sample at 24000 Hz"):
        open_item(Item("span", str(path), offset=1e-05, duration=1e-05), "span")  # not "past the end"
    data[len(data) // 2] ^= 0x10  # damage: counting meets it
    path.write_bytes(data)
    with pytest.raises(InvalidAudioError, match=r"cannot read .*piped.flac as audio \(.*\); the file may be corrupt"):
        read_audio(path)


@pytest.mark.parametrize("subtype, damage", [("VORBIS", "byte"), ("OPUS", "byte"), ("VORBIS", "capture"),
                                             ("OPUS", "capture")])
def test_a_damaged_ogg_file_is_refused(tmp_path, subtype, damage):
    """libsndfile skips an Ogg page whose checksum fails, or whose capture pattern ("OggS") is damaged, silently:
    Vorbis filled its time with other samples, Opus gave a shorter file. Each page's checksum is checked now."""
    from mimi_cli.sources import open_bytes

    rate = 48000 if subtype == "OPUS" else 24000
    data = bytearray(encoded(np.random.default_rng(6).uniform(-0.5, 0.5, 5 * rate).astype(np.float32), "OGG",
                             subtype, rate))
    whole = tmp_path / "whole.ogg"
    whole.write_bytes(data)
    assert len(read_audio(whole).samples) == 5 * rate
    if damage == "byte":
        data[len(data) // 2] ^= 0x40
        expected = r"its Ogg page at byte [\d,]+ fails its checksum"
    else:
        data[data.index(b"OggS", len(data) // 2)] = ord("X")
        expected = r"bytes at [\d,]+ are not an Ogg page, and pages follow"
    path = tmp_path / "damaged.ogg"
    path.write_bytes(data)
    for read in (lambda: read_audio(path), lambda: open_bytes(bytes(data), str(path))):
        with pytest.raises(InvalidAudioError, match=rf"damaged.ogg is damaged: {expected}; re-copy or re-export it"):
            read()


def test_an_mp3_file_whose_decoder_stops_at_damage_is_refused(tmp_path):
    """mpg123 (in libsndfile) skips a damaged frame or two, as players do, but at some damage it stops: 300
    zeroed bytes at one place gave a third of the file, silently. A read that ends short of the samples the
    frames hold (by more than 0.25 s and 1 %) is refused; a frame or two lost still reads."""
    from mimi_cli.sources import open_bytes

    stops, skips = damaged_mp3s()
    path = tmp_path / "damaged.mp3"
    path.write_bytes(stops)
    for read in (lambda: read_audio(path), lambda: open_bytes(stops, str(path)).read()):
        with pytest.raises(InvalidAudioError, match=r"damaged.mp3 is damaged: it holds [\d.]+ s of audio, and "
                                                    r"decoding it gave [\d.]+ s \(a damaged part was skipped\)"):
            read()
    path.write_bytes(skips[0])
    assert len(read_audio(path).samples) == skips[1]


@pytest.mark.parametrize("subtype, rate", [("MPEG_LAYER_III", 22050), ("OPUS", 48000)])
def test_a_compressed_file_read_in_blocks_or_spans_gives_the_samples_of_one_pass(tmp_path, subtype, rate):
    """python-soundfile seeks after every read, and libsndfile's MP3 decoder restarted there without the bit
    reservoir: blocks of a low-bit-rate MP3 held noise where a frame's bits began in the frame before (9 of 365
    frames of other codes with --stream), and so did a span's start (24 of 456 frames in a manifest); an Opus
    span differed in the last bits now and then. Blocks and spans now give the samples of one pass from the
    start (read here as one block; the two differ by a rounding, 1.2e-7, at most)."""
    from scipy.signal import resample_poly

    from mimi_cli.audio import open_audio, read_blocks
    from mimi_cli.sources import Item, open_item

    speech, speech_rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    path = tmp_path / ("low.mp3" if subtype.startswith("MPEG") else "low.opus")
    mp3 = subtype.startswith("MPEG")  # at 8 kbps, whose frames' bits reach furthest back
    sf.write(path, resample_poly(speech, rate, speech_rate).astype(np.float32), rate, format="MP3" if mp3 else
             "OGG", subtype=subtype, compression_level=0.99, **({"bitrate_mode": "CONSTANT"} if mp3 else {}))
    whole, _ = sf.read(path, dtype="float32", always_2d=True)
    with open_audio(path) as f:
        blocks = np.concatenate(list(read_blocks(path, f, 4096)))
    np.testing.assert_allclose(blocks, whole, rtol=0, atol=1e-6)
    for offset in np.random.default_rng(3).uniform(1, len(whole) / rate - 2, 40):
        with open_item(Item("span", str(path), offset=float(offset), duration=1.0), "span") as f:
            span = f.read(dtype="float32", always_2d=True)
        start = round(offset * rate)
        np.testing.assert_allclose(span, whole[start : start + rate], rtol=0, atol=1e-6, err_msg=f"at {offset} s")


@pytest.mark.parametrize("container, subtype", [("WAV", "GSM610"), ("WAV", "NMS_ADPCM_16"), ("AU", "G721_32"),
                                                ("AIFF", "GSM610")])
def test_a_format_libsndfile_cannot_seek_in_reads(tmp_path, container, subtype):
    """Telephony codecs (GSM 6.10, G.721, NMS ADPCM) failed with libsndfile's "Seek attempted on unseekable
    file type": reading asked the file for its position. It is counted as the file is read now, for a file,
    a tar member and a manifest's span."""
    import io

    from mimi_cli.sources import Item, open_bytes, open_item

    samples = np.random.default_rng(2).uniform(-0.5, 0.5, 8000).astype(np.float32)
    path = tmp_path / f"phone.{container.lower()}"
    sf.write(path, samples, 8000, format=container, subtype=subtype)
    want, _ = sf.read(path, dtype="float32", always_2d=True)
    assert not sf.SoundFile(path).seekable() and not sf.SoundFile(io.BytesIO(path.read_bytes())).seekable()
    np.testing.assert_array_equal(read_audio(path).samples, want)
    with open_bytes(path.read_bytes(), "member") as f:
        np.testing.assert_array_equal(f.read(dtype="float32", always_2d=True), want)
    with open_item(Item("span", str(path), offset=0.25, duration=0.5), "span") as f:
        np.testing.assert_array_equal(f.read(dtype="float32", always_2d=True), want[2000:6000])


def test_a_header_declaring_more_than_memory_holds_is_refused_before_reading(tmp_path):
    """A 50 KB FLAC whose STREAMINFO declares 2³⁶ − 1 samples (47,722 min): read whole (mimi run --stream), it
    was an allocation of 256 GiB that ended as "out of memory, free some memory"; now refused from the header."""
    lying_flac(tmp_path)
    assert sf.info(tmp_path / "lying.flac").frames == 2**36 - 1
    with pytest.raises(InvalidAudioError, match=r"lying\.flac declares 47721\.9 min of audio, about 1,100 GB once "
                                                r"read, more than half this machine's"):
        read_audio(tmp_path / "lying.flac")
    assert len(read_audio(tmp_path / "one.flac").samples) == 24000


def test_what_c_code_prints_on_stderr_is_caught_and_descriptor_2_put_back(capfd):
    """mimi_cli/c_stderr.py: descriptor 2 points at a file inside the block, and back after it, an error too; a
    terminal's display written meanwhile (escape codes) goes where it was going."""
    import os

    from mimi_cli.c_stderr import MAX_LINES, CaughtStderr

    caught = CaughtStderr()
    with caught.caught():
        os.write(2, b"Note: Illegal Audio-MPEG-Header 0x00000000 at offset 5112.\nNote: Trying to resync...\n")
        os.write(2, b"\r\x1b[2K a progress bar\n")
    with pytest.raises(KeyError), caught.caught():
        os.write(2, b"Note: Skipped 198 bytes in input.\n" + b"x\n" * (2 * MAX_LINES))
        raise KeyError
    os.write(2, b"after\n")
    assert caught.lines[:3] == ["Note: Illegal Audio-MPEG-Header 0x00000000 at offset 5112.",
                                "Note: Trying to resync...", "Note: Skipped 198 bytes in input."]
    assert len(caught.lines) == MAX_LINES and caught.count == 3 + 2 * MAX_LINES
    assert capfd.readouterr().err == "\r\x1b[2K a progress bar\nafter\n"
    caught.close()

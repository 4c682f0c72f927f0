"""Frame sources: camera or stream (background reader, stale frames dropped), video file (decoded ahead on a thread),
image, image folder."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.cores import helper_cores, keep_off_frame_core, made_off_frame_core
from fer_runtime.data import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, ImageTooLarge, read_photo
from fer_runtime.errors import FerError

MAX_BAD_FRAMES = 25  # consecutive undecodable frames before a video counts as ended


class SourceError(FerError, RuntimeError):
    pass


@dataclass
class Frame:
    index: int
    timestamp: float | None  # seconds since the source started (or video position); None for photos
    image: np.ndarray | None  # None: a corrupt frame, counted and skipped
    name: str = ""
    error: str = ""  # why ``image`` is None, when known
    gray: np.ndarray | None = None  # ``image`` in gray, where a decoding thread made it off the frame loop's core
    scale: int = 1  # a photo decoded reduced: the file's pixels per ``image`` pixel


class ImageSource:
    """Image files, each classified on its own (no tracking or smoothing across files).

    A photo has no time: its frames carry ``timestamp=None`` and are named by their path relative to ``root``
    (the folder given), or by their file name.
    """

    independent = True

    def __init__(self, paths: list[Path], root: Path | None = None):
        if not paths:
            raise SourceError("no images found")
        self.paths = paths
        self.root = root
        self.fps = 0.0
        self.lost = False
        self.unsupported: list[str] = []  # files of image formats OpenCV does not read here (GIF, ...): named, not read

    def name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if self.root is not None else path.name

    def __iter__(self) -> Iterator[Frame]:
        for i, p in enumerate(self.paths):
            try:
                (image, scale), error = read_photo(p), ""
            except ImageTooLarge as exc:
                image, scale, error = None, 1, str(exc)
            yield Frame(i, None, image, self.name(p), error, scale=scale)

    def close(self) -> None:
        pass


# Frames a video file is decoded ahead of the frame loop, on a thread of its own: decoding a 640x480 MPEG-4 frame
# costs about 1 ms on a 2-core EPYC, half of a 500 FPS frame, and overlaps the frame loop there (issue 48).
PREFETCH_FRAMES = 4
_END = object()
_WAIT_S = 0.1  # how often a thread waiting on the queue looks whether it should stop
JOIN_S = 5.0  # how long closing waits for the decoder to stop (a read in progress finishes first)


class _DecodeAhead:
    """One pass over a video's frames, decoded on a thread of its own into a queue of ``size``; ``end`` stops it."""

    def __init__(self, frames: Callable[[threading.Event], Iterator[Frame]], size: int) -> None:
        self.ready: queue.Queue = queue.Queue(maxsize=size)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(frames,), name="fer-decode", daemon=True)
        self.thread.start()

    def _work(self, frames: Callable[[threading.Event], Iterator[Frame]]) -> None:
        keep_off_frame_core()
        try:
            for frame in frames(self.stop):
                if frame.image is not None and frame.image.ndim == 3:
                    # every frame is followed in gray: converted here, on the decoder's core, it leaves the frame loop
                    # 0.2 ms a 640x480 frame (a tenth of a 500 FPS frame)
                    frame.gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
                if not self._put(frame):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - raised in the frame loop, where the run ends
            self._put(exc)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=_WAIT_S)
                return True
            except queue.Full:
                continue
        return False

    def next(self, closed: threading.Event):
        """The next frame, the error that ended decoding, or _END (the video's end, or the source closed meanwhile)."""
        while True:
            try:
                return self.ready.get(timeout=_WAIT_S)
            except queue.Empty:
                if closed.is_set() or not self.thread.is_alive():
                    try:
                        return self.ready.get_nowait()  # what the reader put just before it ended
                    except queue.Empty:
                        return _END

    def end(self) -> None:
        self.stop.set()
        self.thread.join(timeout=JOIN_S)


def decoding_threads() -> int | None:
    """FFmpeg's threads for a video decoded off the frame loop's core: one per helper core (``cores.py``), or FFmpeg's
    own choice (one per core of the machine) where helper threads are not pinned. On a 2-core CPU FFmpeg's two threads
    share the one helper core, and a 640x480 frame cost 1.68 ms of CPU against 1.46 ms with one."""
    cores = helper_cores()
    return len(cores) if cores else None


def _open_video(path: str) -> cv2.VideoCapture:
    threads = decoding_threads()
    if threads:
        cap = cv2.VideoCapture(path, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, threads])
        if cap.isOpened():
            return cap
    return cv2.VideoCapture(path)  # a backend that takes no thread count


class VideoSource:
    """A video file: every frame is kept, in order, decoded up to ``prefetch`` frames ahead on a thread of its own
    (``prefetch=0``: on the caller's), which with FFmpeg's threads keeps off the frame loop's core (``cores.py``). The
    capture is read by one thread at a time and never released mid-read."""

    independent = False
    timeline = True  # frame timestamps are positions in the file: a window plays them at the file's frame rate

    def __init__(self, path: str, prefetch: int = PREFETCH_FRAMES):
        self.cap = made_off_frame_core(lambda: _open_video(path)) if prefetch else cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise SourceError(f"cannot open video {path}: not a video OpenCV can read")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.lost = False
        self.unread = 0  # frames the container lists that were never reached (a truncated or damaged tail)
        self.prefetch = prefetch
        self._tail = 0  # ``unread`` as the decoder found it at the end, taken once the frame loop gets there
        self._closed = threading.Event()
        self._capture = threading.Lock()
        self._ahead: _DecodeAhead | None = None

    def __iter__(self) -> Iterator[Frame]:
        if self._ahead is not None:
            self._ahead.end()  # a pass left unfinished stops reading before this one starts
        if not self.prefetch:
            yield from self._decode(self._closed)
            self.unread = self._tail
            return
        ahead = self._ahead = _DecodeAhead(self._decode, self.prefetch)
        try:
            while (item := ahead.next(self._closed)) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
            if not self._closed.is_set():
                self.unread = self._tail
        finally:
            ahead.end()

    def _decode(self, stop: threading.Event) -> Iterator[Frame]:
        """Every frame; one that does not decode comes as ``image=None`` (counted, skipped) and the video goes on."""
        total = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        i = failures = 0
        while not stop.is_set() and (read := self._with_capture(lambda cap: cap.read())) is not None:
            ok, img = read
            if not ok or img is None or not img.size:
                # OpenCV stops at a damaged frame; the container may still hold good ones after it
                failures += 1
                if i >= total - 1 or failures > MAX_BAD_FRAMES:
                    self._tail = max(0, total - i)
                    return
                yield Frame(i, i / self.fps, None)
                i += 1
                if self._with_capture(lambda cap, i=i: cap.set(cv2.CAP_PROP_POS_FRAMES, i)) is None:
                    return
                continue
            failures = 0
            yield Frame(i, i / self.fps, img)
            i += 1

    def _with_capture(self, call: Callable):
        """``call(capture)``, or None once the source is closed: never while ``close`` releases the capture."""
        with self._capture:
            return None if self._closed.is_set() else call(self.cap)

    def close(self) -> None:
        self._closed.set()
        if self._ahead is not None:
            self._ahead.end()
        with self._capture:  # after a read in progress, never during it
            self.cap.release()


DEFAULT_RECONNECT_S = 30.0  # how long a dropped camera or stream is reopened before the run ends (--reconnect)
MAX_BACKOFF_S = 2.0  # the longest wait between two attempts to reopen it
STALL_FRAMES = 10  # a camera or stream silent for this many frame times (1 s at least) is down, for the summary


class LiveSource:
    """Camera or stream URL read on a background thread; the consumer always gets the newest frame.

    A camera or stream that stops giving frames is reopened with backoff (``retry_wait`` doubling up to
    MAX_BACKOFF_S) for up to ``reconnect`` seconds (``math.inf``: for ever); meanwhile the frame loop waits and the
    outputs stay as they are. Each outage's length is kept in ``outages``; one that outlasts ``reconnect`` ends the
    stream cleanly with ``lost`` set.
    """

    independent = False

    def __init__(self, target: int | str, capture_factory: Callable[[int | str], object] = cv2.VideoCapture,
                 reconnect: float = DEFAULT_RECONNECT_S, retry_wait: float = 0.5):
        self.target = target
        self.factory = capture_factory
        self.reconnect = reconnect
        self.retry_wait = retry_wait
        self.cap = made_off_frame_core(lambda: capture_factory(target))
        if not self.cap.isOpened():
            if isinstance(target, int):
                raise SourceError(
                    f"cannot open camera {target}: check it is connected and not used by another program, try another "
                    "index (--camera 1), or on Linux check permissions on /dev/video*"
                )
            raise SourceError(f"cannot open stream {target}: check the URL, that the server is up and reachable from "
                              "here, and that OpenCV's FFmpeg backend supports the protocol")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 30.0)
        self.lost = False
        self.outages: list[float] = []  # seconds from the last frame before each outage to the first after it
        self.down_since: float | None = None  # the last frame's time (perf_counter) while an outage goes on
        self.last_frame = time.perf_counter()  # when the reader last got a frame (or the source opened)
        self._latest: np.ndarray | None = None
        self._seq = 0
        # a video file at a URL (its capture gives a length) is read whole, every frame in order, as a local file is;
        # a camera or a live stream gives its newest frame
        self._queue: deque | None = deque() if isinstance(target, str) and self._length() else None
        self.timeline = self._queue is not None  # a file's frames carry their place in it, and play at its rate
        self._at_end = False  # the reader reached a file's end
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        keep_off_frame_core()
        try:
            self._read_until_lost()
        except Exception:  # noqa: BLE001 - a capture that raises as it is reopened is a source lost, not a hung run
            self.lost = True
        finally:
            # released here, on the thread that reads it: a close() that gave up waiting must not release it mid-read
            self.cap.release()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _read_until_lost(self) -> None:
        wait = self.retry_wait
        length, read = self._length(), 0  # a video file served over HTTP ends; a live stream has no length
        while not self._stop.is_set():
            ok, img = self.cap.read()
            if ok and img is not None:
                if self.down_since is not None:
                    self.outages.append(time.perf_counter() - self.last_frame)
                self.down_since, wait, self.last_frame, read = None, self.retry_wait, time.perf_counter(), read + 1
                with self._cond:
                    while self._queue is not None and len(self._queue) >= FILE_AHEAD and not self._stop.is_set():
                        self._cond.wait(timeout=0.1)
                    if self._queue is not None:
                        self._queue.append(img)
                    self._latest, self._seq = img, self._seq + 1
                    self._cond.notify_all()
                continue
            if length and read >= length - max(2, length // 100):
                self._at_end = True
                return  # the end of a file (its count may be an estimate a frame or two long), not an outage
            self.down_since = self.last_frame
            if time.perf_counter() - self.last_frame >= self.reconnect:
                self.lost, self.down_since = True, None
                self.outages.append(time.perf_counter() - self.last_frame)
                break
            if self._stop.wait(min(wait, max(0.0, self.last_frame + self.reconnect - time.perf_counter()))):
                break
            wait = min(wait * 2, MAX_BACKOFF_S)
            self.cap.release()
            self.cap = self.factory(self.target)
            length = self._length()
            if not (length and read and self.cap.set(cv2.CAP_PROP_POS_FRAMES, read)):
                if self._queue is not None and read:  # a file read whole: on where it broke off, or not at all
                    if not self.cap.isOpened():
                        continue  # still down: tried again, its place kept
                    self.lost = True  # open but cannot seek: not played again from its start (its frames were kept)
                    self.outages.append(time.perf_counter() - self.last_frame)
                    self.down_since = None
                    break
                read = 0  # a file reopened goes on where it broke off, where it can; a live stream starts anew

    def _length(self) -> int:
        """The frames a URL's capture says it holds (a file's count); 0 for a camera or a live stream."""
        return _frame_count(self.cap) if isinstance(self.target, str) else 0

    def outage_now(self) -> float | None:
        """How long the outage going on has lasted (seconds since the last frame), or None: once a read has failed, or
        when nothing has come for STALL_FRAMES frame times, a stall the read has not given up on yet."""
        if self._at_end:
            return None  # a file that ended: the frames still queued are no outage
        since = self.down_since
        if since is not None:
            return time.perf_counter() - since
        quiet = time.perf_counter() - self.last_frame
        return quiet if quiet > max(1.0, STALL_FRAMES / self.fps) else None

    def __iter__(self) -> Iterator[Frame]:
        """The newest frame each time (a file at a URL: every frame); through an outage it waits (in short steps, so
        Ctrl-C gets through)."""
        start, seen, index = time.perf_counter(), 0, 0
        while True:
            with self._cond:
                if self._queue is not None:  # a file at a URL: the next frame, at its place in the file
                    while not self._queue and not self._done:
                        self._cond.wait(timeout=0.1)
                    if not self._queue:
                        return
                    img, timestamp = self._queue.popleft(), index / self.fps
                    self._cond.notify_all()
                else:
                    while self._seq == seen and not self._done:
                        self._cond.wait(timeout=0.1)
                    if self._seq == seen:
                        return
                    img, seen, timestamp = self._latest, self._seq, time.perf_counter() - start
            yield Frame(index, timestamp, img)
            index += 1

    def close(self) -> None:
        """Stops the reader, which releases the capture; one blocked in a read does so once the read gives up."""
        self._stop.set()
        self._thread.join(timeout=2.0)


def _frame_count(cap) -> int:
    """The frames a capture says it holds: a file's count, 0 for a live stream (which reports none, or nonsense)."""
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0
    return int(count) if 0 < count < 1e9 else 0


STREAM_STALL_S = 10.0  # a stream URL that sends nothing for this long (or --reconnect, when shorter) has dropped


def stream_capture(reconnect: float) -> Callable[[str], object]:
    """Opens a stream URL with FFmpeg, giving up an open or a read after STREAM_STALL_S or ``reconnect`` seconds (1 at
    least) instead of OpenCV's 30: a stream that stalls without closing is reopened, and given up, as --reconnect
    says."""
    ms = int(1000 * min(STREAM_STALL_S, max(1.0, reconnect)))
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    return lambda url: cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


def _kinds(names: list[str]) -> str:
    return "/".join(sorted({Path(n).suffix.lower()[1:].upper() for n in names}))


def folder_images(folder: Path, extensions=IMAGE_EXTENSIONS) -> list[Path]:
    """The image files under ``folder``, subfolders included (e.g. one per class), in a stable order; hidden
    files and folders are skipped."""
    files = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if p.suffix.lower() in extensions and not any(part.startswith(".") for part in rel) and p.is_file():
            files.append(p)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


FILE_AHEAD = 8  # frames of a video file at a URL read ahead of the frame loop


def open_source(camera: int | None = None, source: str | None = None,
                capture_factory: Callable[[int | str], object] = cv2.VideoCapture, reconnect: float = DEFAULT_RECONNECT_S,
                prefetch: int = PREFETCH_FRAMES):
    if (camera is None) == (source is None):
        raise SourceError("give exactly one of --camera N or --source PATH|URL")
    if camera is not None:
        return LiveSource(camera, capture_factory, reconnect)
    if "://" in source:
        factory = stream_capture(reconnect) if capture_factory is cv2.VideoCapture else capture_factory
        return LiveSource(source, factory, reconnect)
    path = Path(source)
    if not path.exists():
        raise SourceError(f"source not found: {source}")
    if path.is_dir():
        files = folder_images(path)
        unsupported = sorted(p.relative_to(path).as_posix() for p in folder_images(path, UNSUPPORTED_IMAGE_EXTENSIONS))
        if not files:
            extra = f" ({len(unsupported)} {_kinds(unsupported)} files, a format not read: convert them to PNG)"
            extra = extra if unsupported else ""
            raise SourceError(f"no images in folder {source} or its subfolders{extra}")
        images = ImageSource(files, root=path)
        images.unsupported = unsupported
        return images
    if path.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
        raise SourceError(f"{source}: {path.suffix.lower()[1:].upper()} images are not read (animated or not, they are "
                          "not taken for video); convert it to PNG, or to MP4 for an animation")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource([path])
    return VideoSource(str(path), prefetch)

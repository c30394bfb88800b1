"""Progress of the commands that translate files: tqdm bars, ``PROGRESS <percent>`` lines, or nothing."""

from __future__ import annotations

__all__ = ["Reporter"]


class Reporter:
    """Progress over files and slices: tqdm bars, ``PROGRESS <percent>`` lines, or nothing."""

    def __init__(self, mode: str, n_files: int) -> None:
        self.mode, self.n_files, self.files_done, self.last = mode, n_files, 0, -1
        self.files_bar = self.slices_bar = None
        if mode == "bar":
            from tqdm.auto import tqdm  # ~70 ms of imports (asyncio): not for --help

            if n_files > 1:
                self.files_bar = tqdm(total=n_files, desc="files", unit="file", position=0)

    def expect(self, path: object, seconds: float) -> None:
        """Say how long the file in hand should take: ``ESTIMATE <seconds> <file>`` lines for other programs
        (the Slicer module), one line on stderr above the bars."""
        import sys

        if self.mode == "lines":
            print(f"ESTIMATE {seconds:.4g} {path}", flush=True)
        elif self.mode == "bar":
            print(f"{path}: expected about {seconds:.0f} s", file=sys.stderr, flush=True)

    def slices(self, done: int, total: int) -> None:
        if self.mode == "bar":
            if self.slices_bar is None:
                from tqdm.auto import tqdm  # see __init__

                self.slices_bar = tqdm(total=total, desc="slices", unit="slice",
                                       position=1 if self.n_files > 1 else 0, leave=self.n_files == 1)
            if self.slices_bar.total != total or done < self.slices_bar.n:
                self.slices_bar.reset(total=total)
            self.slices_bar.update(done - self.slices_bar.n)
        elif self.mode == "lines":
            percent = int(100 * (self.files_done + done / max(total, 1)) / max(self.n_files, 1))
            if percent != self.last:
                self.last = percent
                print(f"PROGRESS {percent}", flush=True)

    def file_done(self, path: object, out: object, problem: str | None) -> None:
        self.files_done += 1
        if self.files_bar is not None:
            self.files_bar.update(1)

    def close(self) -> None:
        for bar in (self.slices_bar, self.files_bar):
            if bar is not None:
                bar.close()

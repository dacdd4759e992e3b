"""Typed errors of the model store. Only app/ turns them into HTTP responses."""


class HushError(Exception):
    """Base class of every error hush raises on purpose."""


class VariantNotFoundError(HushError, LookupError):
    """No variant with that id in the store."""

    def __init__(self, variant_id: str, available: list[str]) -> None:
        choices = ", ".join(available) if available else "none: the store is empty"
        super().__init__(f"no variant {variant_id!r} in the store (available: {choices})")
        self.variant_id = variant_id
        self.available = available


class VariantExistsError(HushError):
    """Publishing under an id the store already holds."""


class StoreRootError(HushError):
    """The store's root is not a directory, or not one this process may write to."""


class CorruptVariantError(HushError):
    """A variant directory that is not a valid variant: missing manifest, bad schema, wrong hashes."""


class InvalidVariantIdError(HushError, ValueError):
    """An id that is not URL-safe."""


class SourceError(HushError):
    """A model source (bundle, directory, hub id) that cannot be imported."""


class ChecksumMismatchError(SourceError):
    """Bytes that do not match their pinned SHA-256."""


class AudioDecodeError(HushError, ValueError):
    """Input that is not decodable audio, or holds no samples."""


class EmptyAudioError(AudioDecodeError):
    """Decodable input with no audio samples in it."""


class InvalidSamplesError(AudioDecodeError):
    """Decoded audio with samples that are not numbers (NaN) or infinite: a broken float recording."""


ECHO_LIMIT = 40  # characters of a client's value quoted back in an error message


class UnsupportedLanguageError(HushError, ValueError):
    """A language code the model does not know."""

    def __init__(self, language: str, supported: list[str]) -> None:
        quoted = language if len(language) <= ECHO_LIMIT else language[:ECHO_LIMIT] + "..."
        super().__init__(f"unsupported language {quoted!r}; supported: {', '.join(sorted(supported))}")
        self.language = language
        self.supported = supported


class BackendUnavailableError(HushError):
    """A variant whose backend or device cannot run here (e.g. a CUDA-only variant on a CPU machine)."""


class AudioTooLongError(AudioDecodeError):
    """Audio longer than the caller's limit; decoding stopped as soon as the limit was passed."""

    def __init__(self, max_seconds: float) -> None:
        super().__init__(f"audio is longer than the limit of {max_seconds:g} s")
        self.max_seconds = max_seconds

"""Errors of the local stack: broker, topics, jars and Spark."""


class StackError(RuntimeError):
    """Base class of errors raised while starting, checking or stopping the embedded stack."""


class PortInUseError(StackError):
    """A port the embedded broker needs is already bound by another process."""


class BrokerStartError(StackError):
    """The embedded broker exited or did not return metadata in time."""


class JarsMissingError(StackError):
    """The Maven step that resolves the broker or Delta jars has not run."""


class TopicSpecError(StackError):
    """The declarative topic spec is invalid or cannot be applied to the cluster."""


class OrchestratorError(RuntimeError):
    """The retrain orchestrator cannot read or record its jobs, or read its topic."""

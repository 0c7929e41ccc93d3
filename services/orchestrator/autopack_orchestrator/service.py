"""gRPC transport of the orchestrator: validate, call the store or executor, map to messages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from autopack.orchestrator.v1 import orchestrator_pb2_grpc
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.errors import InvalidArgument
from autopack_common.server import ServiceBinding
from opentelemetry import trace
from sqlalchemy import Engine

from autopack_orchestrator.clients import ServiceClients
from autopack_orchestrator.convert import (
    drain_options_from_proto,
    drain_session_to_proto,
    event_to_proto,
    plan_from_proto,
    run_to_proto,
    state_from_proto,
)
from autopack_orchestrator.drain import DrainController
from autopack_orchestrator.executor import RunExecutor
from autopack_orchestrator.plan import validate_plan, validate_run_id
from autopack_orchestrator.settings import OrchestratorSettings
from autopack_orchestrator.store import RunStore

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
WATCH_POLL_SECONDS = 0.1


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Thin adapter: every rule lives in plan.py, store.py or executor.py."""

    def __init__(
        self,
        store: RunStore,
        executor: RunExecutor,
        drains: DrainController,
        poll_seconds: float = WATCH_POLL_SECONDS,
    ) -> None:
        self._store = store
        self._executor = executor
        self._drains = drains
        self._poll_seconds = poll_seconds

    def CreateRun(self, request: pb.CreateRunRequest, context: grpc.ServicerContext) -> pb.CreateRunResponse:
        if not request.HasField("plan"):
            raise InvalidArgument("plan", "is required")
        plan = validate_plan(plan_from_proto(request.plan))
        return pb.CreateRunResponse(run=run_to_proto(self._store.create_run(plan)))

    def StartRun(self, request: pb.StartRunRequest, context: grpc.ServicerContext) -> pb.StartRunResponse:
        run_id = validate_run_id(request.run_id)
        return pb.StartRunResponse(run=run_to_proto(self._executor.start_run(run_id)))

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        run_id = validate_run_id(request.run_id)
        return pb.GetRunResponse(run=run_to_proto(self._store.get_run(run_id)))

    def ListRuns(self, request: pb.ListRunsRequest, context: grpc.ServicerContext) -> pb.ListRunsResponse:
        if request.state not in pb.State.values():
            raise InvalidArgument("state", f"unknown state {request.state}")
        records, next_token = self._store.list_runs(
            request.page_size, request.page_token, state_from_proto(request.state)
        )
        return pb.ListRunsResponse(
            runs=[run_to_proto(record) for record in records], next_page_token=next_token
        )

    def CancelRun(self, request: pb.CancelRunRequest, context: grpc.ServicerContext) -> pb.CancelRunResponse:
        run_id = validate_run_id(request.run_id)
        if len(request.reason) > 2000:
            raise InvalidArgument("reason", "must be at most 2000 characters")
        return pb.CancelRunResponse(
            run=run_to_proto(self._executor.cancel_run(run_id, request.reason.strip()))
        )

    def ResumeRun(self, request: pb.ResumeRunRequest, context: grpc.ServicerContext) -> pb.ResumeRunResponse:
        run_id = validate_run_id(request.run_id)
        return pb.ResumeRunResponse(run=run_to_proto(self._executor.resume_run(run_id)))

    def StartDrain(
        self, request: pb.StartDrainRequest, context: grpc.ServicerContext
    ) -> pb.StartDrainResponse:
        options = drain_options_from_proto(request.options)
        return pb.StartDrainResponse(session=drain_session_to_proto(self._drains.start(options)))

    def GetDrainSession(
        self, request: pb.GetDrainSessionRequest, context: grpc.ServicerContext
    ) -> pb.GetDrainSessionResponse:
        if not request.session_id:
            raise InvalidArgument("session_id", "is required")
        session = self._store.get_drain_session(request.session_id)
        return pb.GetDrainSessionResponse(session=drain_session_to_proto(session))

    def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchRunResponse]:
        """Replay stored events, then follow new ones until the run's (latest) terminal event."""
        run_id = validate_run_id(request.run_id)
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence", "must not be negative")
        self._store.run_state(run_id)  # NOT_FOUND before the stream starts
        bus = self._store.bus
        context.add_callback(lambda: bus.publish(run_id))  # wake our wait when the client goes away
        last = request.after_sequence
        while context.is_active():
            seen = bus.version(run_id)
            # State before events: a terminal state guarantees its event is already readable.
            finished = self._store.run_state(run_id).terminal
            events = self._store.events_after(run_id, last)
            for event in events:
                yield event_to_proto(event)
                last = event.sequence
            # Only the latest terminal event ends the stream: a resumed run goes on after an old one.
            if events and events[-1].ends_run and finished:
                return
            if not events:
                if finished:
                    return
                bus.wait(run_id, seen, self._poll_seconds)


@dataclass
class Orchestrator:
    """The assembled service: its store, executor, clients and servicer."""

    engine: Engine
    store: RunStore
    clients: ServiceClients
    executor: RunExecutor
    drains: DrainController
    servicer: OrchestratorServicer
    shutdown_grace_seconds: float

    def binding(self) -> ServiceBinding:
        return ServiceBinding(
            SERVICE_NAME, orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server, self.servicer
        )

    def close(self) -> None:
        self.drains.stop()
        self.executor.shutdown(self.shutdown_grace_seconds)
        self.clients.close()
        self.engine.dispose()


def create_orchestrator(
    settings: OrchestratorSettings,
    clients: ServiceClients | None = None,
    tracer: trace.Tracer | None = None,
    owner: str | None = None,
) -> Orchestrator:
    """Migrate the database, resume abandoned runs and return the servicer ready to bind."""
    engine = create_db_engine(settings.resolved_database_url("orchestrator"))
    upgrade_schema(engine, "autopack_orchestrator.migrations", "alembic_version_orchestrator")
    store = RunStore(engine)
    clients = clients or ServiceClients()
    executor = RunExecutor(store, clients, settings, tracer=tracer, owner=owner)
    executor.start()
    drains = DrainController(store, executor.owner, executor.wake, settings.lease_seconds)
    drains.watch()
    return Orchestrator(
        engine=engine,
        store=store,
        clients=clients,
        executor=executor,
        drains=drains,
        servicer=OrchestratorServicer(store, executor, drains),
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )

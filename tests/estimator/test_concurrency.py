"""Many clients recording outcomes at once lose nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import grpc
from autopack.estimator.v1 import estimator_pb2, estimator_pb2_grpc

CLIENTS = 12
OUTCOMES_PER_CLIENT = 20


def test_concurrent_record_outcome_from_many_clients_loses_nothing(
    database_url: str, start_estimator
) -> None:  # type: ignore[no-untyped-def]
    estimator = start_estimator(database_url)
    estimate = estimator.stub.Estimate(
        estimator_pb2.EstimateRequest(
            run_id="load", phase_id="p", description="Add the module", deliverables=["src/m.py"]
        ),
        timeout=30,
    )
    barrier = threading.Barrier(CLIENTS)
    event_ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        # Each client has its own connection, like separate builder processes.
        channel = grpc.insecure_channel(estimator.address, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = estimator_pb2_grpc.EstimatorServiceStub(channel)
        try:
            barrier.wait()
            for attempt in range(OUTCOMES_PER_CLIENT):
                # Interleave fresh estimates so outcomes race with the write-behind of estimates.
                estimate_id = estimate.estimate_id
                if attempt % 5 == 0:
                    estimate_id = stub.Estimate(
                        estimator_pb2.EstimateRequest(
                            run_id="load", phase_id=f"p{number}-{attempt}", description="Add the module"
                        ),
                        timeout=30,
                    ).estimate_id
                response = stub.RecordOutcome(
                    estimator_pb2.RecordOutcomeRequest(
                        estimate_id=estimate_id,
                        actual_output_tokens=100 + number * 1000 + attempt,
                        success=True,
                        stop_reason="end_turn",
                    ),
                    timeout=30,
                )
                assert response.status == estimator_pb2.OUTCOME_STATUS_RECORDED
                with lock:
                    event_ids.append(response.event_id)
        except BaseException as error:
            errors.append(error)
        finally:
            channel.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    expected = CLIENTS * OUTCOMES_PER_CLIENT
    assert len(event_ids) == len(set(event_ids)) == expected
    stored = estimator.store.list_events()
    assert len(stored) == expected
    assert {event.event_id for event in stored} == set(event_ids)
    assert sorted(event.actual_output_tokens for event in stored) == sorted(
        100 + number * 1000 + attempt for number in range(CLIENTS) for attempt in range(OUTCOMES_PER_CLIENT)
    )
    accuracy = estimator.stub.GetAccuracy(estimator_pb2.GetAccuracyRequest(), timeout=30)
    assert accuracy.overall.events == expected

"""The deploy record and the policy that reads it, on a Dagster instance of their own (no cluster needed)."""

from __future__ import annotations

import dagster as dg
import pytest

from hubploy_dagster.keys import release_key
from hubploy_dagster.policy import awaiting_promotion, promotion
from hubploy_dagster.record import (
    PROMOTION_OVERRIDE,
    DeployRecord,
    Healthy,
    RefusedPromotion,
    Rollback,
    Superseded,
    fact_of,
    observation,
)

FINGERPRINT = "f" * 64
SHA = "a" * 40


@pytest.mark.parametrize(
    "fact",
    [
        Healthy(3, FINGERPRINT, SHA),
        Healthy(None, FINGERPRINT, SHA),
        Rollback("done", from_revision=3, to_revision=1, new_revision=4, cause={"failed_checks": "hub_api"}),
        Rollback("done", from_revision=None, to_revision=1, new_revision=4, cause={"failed_upgrade": "helm upgrade"}),
        Rollback("impossible", from_revision=1, cause={"failed_checks": "hub_api"}),
        Rollback("manual", to_revision=1, new_revision=3),
        RefusedPromotion("never passed its staging checks", SHA, FINGERPRINT),
        Superseded("run-2", SHA),
    ],
)
def test_every_fact_reads_back_as_written(fact):
    event = observation("lab", "staging", fact)
    assert event.asset_key == release_key("lab", "staging")
    assert fact_of({k: v.value for k, v in event.metadata.items()}) == fact


def test_plain_observations_are_no_facts():
    assert fact_of({"note": 1}) is None and fact_of({"promotion": "other"}) is None


def record_with_a_healthy_staging_release() -> DeployRecord:
    instance = dg.DagsterInstance.ephemeral()
    key = release_key("lab", "staging")
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"fingerprint": FINGERPRINT}))
    instance.report_runless_asset_event(observation("lab", "staging", Healthy(1, FINGERPRINT, SHA)))
    return DeployRecord(instance)


def test_look_ups_find_a_healthy_mark_behind_500_other_events():
    record = record_with_a_healthy_staging_release()
    for n in range(500):
        record.instance.report_runless_asset_event(
            dg.AssetObservation(asset_key=release_key("lab", "staging"), metadata={"note": n})
        )
    record.instance.report_runless_asset_event(observation("lab", "staging", Healthy(7, "e" * 64, SHA)))
    assert record.healthy_revision("lab", "staging", before=7) == 1
    assert record.healthy_revision("lab", "staging", before=None) == 7
    assert record.healthy_revision("lab", "staging", before=1) is None
    mark = record.healthy_mark("lab", "staging", FINGERPRINT)
    assert mark is not None and fact_of({k: v.value for k, v in mark.asset_observation.metadata.items()}) == Healthy(
        1, FINGERPRINT, SHA
    )
    assert record.healthy_mark("lab", "staging", "0" * 64) is None


def test_the_gate_promotes_only_what_was_healthy_in_the_environment_before():
    record = record_with_a_healthy_staging_release()
    assert promotion(record, None, "lab", SHA, "0" * 64, None).refused is None, "the first environment is free"
    allowed = promotion(record, "staging", "lab", SHA, FINGERPRINT, None)
    staging = record.instance.fetch_materializations(release_key("lab", "staging"), limit=1).records[0]
    assert allowed.refused is None and allowed.metadata["promoted_from_storage_id"] == staging.storage_id

    refused = promotion(record, "staging", "lab", SHA, "0" * 64, None)
    assert refused.refused is not None and "never passed its staging checks" in refused.refused.reason
    assert awaiting_promotion(record, "staging", ["lab"], {"lab": "0" * 64}) == ["lab"]
    assert awaiting_promotion(record, "staging", ["lab"], {"lab": FINGERPRINT}) == []

    overridden = promotion(record, "staging", "lab", SHA, "0" * 64, "alice: hotfix")
    assert overridden.refused is None and overridden.metadata == {PROMOTION_OVERRIDE: "alice: hotfix"}
    assert "never passed" in overridden.overridden

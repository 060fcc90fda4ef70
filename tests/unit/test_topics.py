import pytest

from chexstack import topics


def test_specs_have_partitions_retention_and_compacted_control() -> None:
    specs = {s.name: s for s in topics.specs(partitions=4, retention_ms=1000)}
    assert set(specs) == set(topics.ALL)
    assert specs["xray.uploaded"].partitions == 4
    assert specs["xray.preprocessed"].config["retention.ms"] == "1000"
    assert specs["chexstack.control"].config["cleanup.policy"] == "compact"
    assert specs["chexstack.control"].partitions == 1


@pytest.mark.parametrize(("partitions", "retention"), [(0, 1000), (3, 0), (3, -5)])
def test_specs_reject_bad_values(partitions: int, retention: int) -> None:
    with pytest.raises(ValueError):
        topics.specs(partitions, retention)


def test_prefixed_names() -> None:
    t = topics.Topics("tenant-a.")
    assert t.uploaded == "tenant-a.xray.uploaded"
    assert t.control == "tenant-a.chexstack.control"

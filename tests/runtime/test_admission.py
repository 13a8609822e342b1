"""Admission decisions are pure: each cap alone, the order they are checked in, tenants without a tenant."""

import pytest

from openrtc import SessionRefused
from openrtc.runtime.admission import Limits, check_admission


def admit(
    limits: Limits, active: int = 0, agent_n: int = 0, tenant_n: int = 0, tenant: str | None = "t"
) -> None:
    check_admission(
        limits, agent="a", tenant=tenant, active=active, active_for_agent=agent_n, active_for_tenant=tenant_n
    )


def test_no_limits_admit_everything() -> None:
    admit(Limits(), active=10**6, agent_n=10**6, tenant_n=10**6)


@pytest.mark.parametrize(
    ("limits", "counts", "cap"),
    [
        (Limits(max_sessions=3), (3, 0, 0), "max_sessions"),
        (Limits(max_sessions_per_agent=2), (2, 2, 0), "max_sessions_per_agent"),
        (Limits(max_sessions_per_tenant=1), (1, 1, 1), "max_sessions_per_tenant"),
        (
            Limits(max_sessions=1, max_sessions_per_agent=1, max_sessions_per_tenant=1),
            (1, 1, 1),
            "max_sessions",
        ),
    ],
)
def test_first_broken_cap_is_named(limits: Limits, counts: tuple[int, int, int], cap: str) -> None:
    with pytest.raises(SessionRefused) as refused:
        admit(limits, *counts)
    assert refused.value.cap == cap
    assert f"{cap}=" in str(refused.value)


def test_just_below_each_cap_is_admitted() -> None:
    admit(Limits(3, 2, 1), active=2, agent_n=1, tenant_n=0)


def test_sessions_without_tenant_skip_tenant_cap() -> None:
    admit(Limits(max_sessions_per_tenant=1), tenant_n=5, tenant=None)

"""FlowChain (ZStack's FlowChain): run in order; on failure roll back exactly the completed flows,
in reverse; finally callbacks always; chains assembled from flows several plugins contribute."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstack_core import (
    ErrorCodeSpace,
    Flow,
    FlowChain,
    FlowContribution,
    FlowError,
    ManagementNode,
    NoRollbackFlow,
    hookimpl,
)

Vm = ErrorCodeSpace(prefix="VMTEST", codes={"1000": "step failed", "1001": "undo failed"})


class Step(Flow):
    def __init__(self, name: str, log: list[str], *, fail: str | None = None, rollback_fails: bool = False,
                 suspend: bool = True) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.rollback_fails = rollback_fails
        self.suspend = suspend

    async def run(self, data: dict[str, Any]) -> None:
        if self.suspend:
            await asyncio.sleep(0)
        self.log.append(f"run:{self.name}")
        if self.fail == "zstack":
            raise Vm.exc("1000", f"{self.name} failed")
        if self.fail == "plain":
            raise OSError(f"{self.name} broke")
        data.setdefault("done", []).append(self.name)

    async def rollback(self, data: dict[str, Any]) -> None:
        if self.suspend:
            await asyncio.sleep(0)
        self.log.append(f"rollback:{self.name}")
        if self.rollback_fails:
            raise Vm.exc("1001", f"cannot undo {self.name}")


class Check(NoRollbackFlow):
    def __init__(self, name: str, log: list[str], *, fail: str | None = None) -> None:
        self.name = name
        self.log = log
        self.fail = fail

    async def run(self, data: dict[str, Any]) -> None:
        self.log.append(f"run:{self.name}")
        if self.fail:
            raise Vm.exc("1000", f"{self.name} failed")


flow_specs = st.lists(
    st.tuples(st.booleans(), st.booleans(), st.booleans()),  # no_rollback, rollback_fails, suspend
    max_size=10,
)


@settings(max_examples=150, deadline=None)
@given(specs=flow_specs, data=st.data())
def test_failure_at_any_step_rolls_back_exactly_the_completed_flows_in_reverse(
        specs: list[tuple[bool, bool, bool]], data: st.DataObject) -> None:
    fail_at = data.draw(st.none() | st.integers(0, len(specs) - 1) if specs else st.none(), label="fail_at")
    fail_kind = data.draw(st.sampled_from(["zstack", "plain"]), label="fail_kind")
    log: list[str] = []
    flows: list[Flow] = []
    for i, (no_rollback, rollback_fails, suspend) in enumerate(specs):
        fail = fail_kind if i == fail_at else None
        if no_rollback:
            flows.append(Check(f"f{i}", log, fail=fail))
        else:
            flows.append(Step(f"f{i}", log, fail=fail, rollback_fails=rollback_fails, suspend=suspend))
    finals: list[str] = []
    chain = FlowChain("prop", flows).finally_(lambda d: finals.append("sync"))

    async def async_final(d: dict[str, Any]) -> None:
        finals.append("async")

    chain.finally_(async_final)

    async def scenario() -> None:
        if fail_at is None:
            result = await chain.run({"seed": 1})
            assert result["seed"] == 1
            assert log == [f"run:f{i}" for i in range(len(specs))]
            return
        with pytest.raises(FlowError) as info:
            await chain.run()
        ran = [f"run:f{i}" for i in range(fail_at + 1)]
        completed = [f"f{i}" for i in range(fail_at) if not specs[i][0]]
        assert log == ran + [f"rollback:{name}" for name in reversed(completed)]
        error = info.value.error
        assert error.code == "SYS.1006" and f"failed at f{fail_at}" in error.details
        assert error.cause is not None
        if fail_kind == "zstack" or specs[fail_at][0]:
            assert error.cause.code == "VMTEST.1000"
        else:
            assert error.cause.code == "SYS.1000" and "OSError" in error.cause.details
        failed_undos = [f"cannot undo {n}" for n in reversed(completed) if specs[int(n[1:])][1]]
        assert [e.details for e in info.value.rollback_errors] == failed_undos

    asyncio.run(scenario())
    assert finals == ["sync", "async"]  # finally callbacks always run, in order


async def test_data_is_shared_between_flows_and_rollbacks() -> None:
    seen: list[Any] = []

    class Allocate(Flow):
        async def run(self, data: dict[str, Any]) -> None:
            data["ip"] = "10.0.0.5"

        async def rollback(self, data: dict[str, Any]) -> None:
            seen.append(("release", data["ip"]))

    class UseIt(Flow):
        async def run(self, data: dict[str, Any]) -> None:
            seen.append(("use", data["ip"]))
            raise Vm.exc("1000", "no room")

    with pytest.raises(FlowError):
        await FlowChain("c").then(Allocate()).then(UseIt()).run()
    assert seen == [("use", "10.0.0.5"), ("release", "10.0.0.5")]


async def test_rollback_errors_do_not_stop_other_rollbacks() -> None:
    log: list[str] = []
    chain = FlowChain("c", [
        Step("a", log), Step("b", log, rollback_fails=True), Step("c", log, rollback_fails=True),
        Step("d", log, fail="zstack"),
    ])
    with pytest.raises(FlowError) as info:
        await chain.run()
    assert log[-3:] == ["rollback:c", "rollback:b", "rollback:a"]
    assert [e.code for e in info.value.rollback_errors] == ["VMTEST.1001", "VMTEST.1001"]
    assert info.value.error.caused("VMTEST.1000")


async def test_a_plain_exception_in_rollback_is_collected() -> None:
    class BadUndo(Flow):
        async def run(self, data: dict[str, Any]) -> None:
            pass

        async def rollback(self, data: dict[str, Any]) -> None:
            raise ZeroDivisionError("x")

    with pytest.raises(FlowError) as info:
        await FlowChain("c", [BadUndo(), Check("boom", [], fail="zstack")]).run()
    (error,) = info.value.rollback_errors
    assert error.code == "SYS.1000" and "ZeroDivisionError" in error.details and "BadUndo" in error.details


async def test_finally_callback_failure_does_not_hide_the_outcome() -> None:
    log: list[str] = []

    def broken(data: dict[str, Any]) -> None:
        raise RuntimeError("finally broke")

    chain = FlowChain("c", [Step("a", log)]).finally_(broken).finally_(lambda d: log.append("second finally"))
    assert (await chain.run())["done"] == ["a"]
    assert log == ["run:a", "second finally"]

    failing = FlowChain("c", [Step("b", log, fail="zstack")]).finally_(broken)
    with pytest.raises(FlowError):
        await failing.run()


async def test_cancellation_mid_chain_rolls_back_then_reraises() -> None:
    log: list[str] = []
    entered = asyncio.Event()
    finals: list[str] = []

    class Hang(Flow):
        name = "hang"

        async def run(self, data: dict[str, Any]) -> None:
            entered.set()
            await asyncio.Event().wait()

        async def rollback(self, data: dict[str, Any]) -> None:  # pragma: no cover - must not run
            log.append("rollback:hang")

    chain = FlowChain("c", [Step("a", log), Check("check", log), Step("b", log), Hang(), Step("never", log)])
    chain.finally_(lambda d: finals.append("finally"))
    task = asyncio.create_task(chain.run())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["run:a", "run:check", "run:b", "rollback:b", "rollback:a"]
    assert finals == ["finally"]


async def test_empty_chain() -> None:
    finals: list[int] = []
    assert await FlowChain("empty").finally_(lambda d: finals.append(1)).run({"x": 1}) == {"x": 1}
    assert finals == [1]


# -- chains assembled from several plugins --------------------------------------------------------


class Named(Flow):
    def __init__(self, name: str) -> None:
        self.name = name

    async def run(self, data: dict[str, Any]) -> None:
        data.setdefault("ran", []).append(self.name)


def test_assemble_orders_by_order_and_keeps_ties_stable() -> None:
    contributions = [
        FlowContribution(chain="vm-create", flow=Named("nic"), order=400),
        FlowContribution(chain="vm-create", flow=Named("volume"), order=300),
        FlowContribution(chain="other", flow=Named("stranger"), order=1),
        FlowContribution(chain="vm-create", flow=Named("host"), order=200),
        FlowContribution(chain="vm-create", flow=Named("ip-a"), order=500),
        FlowContribution(chain="vm-create", flow=Named("ip-b"), order=500),
    ]
    chain = FlowChain.assemble("vm-create", contributions)
    assert [f.flow_name for f in chain.flows] == ["host", "volume", "nic", "ip-a", "ip-b"]


class ComputeFlows:
    @hookimpl
    def zstack_flows(self) -> Sequence[FlowContribution]:
        return [FlowContribution(chain="test-vm-create", flow=Named("allocate-host"), order=100),
                FlowContribution(chain="test-vm-create", flow=Named("create-on-hypervisor"), order=900)]


class StorageFlows:
    @hookimpl
    def zstack_flows(self) -> Sequence[FlowContribution]:
        return [FlowContribution(chain="test-vm-create", flow=Named("allocate-volume"), order=300)]


class NetworkFlows:
    @hookimpl
    def zstack_flows(self) -> Sequence[FlowContribution]:
        return [FlowContribution(chain="test-vm-create", flow=Named("allocate-ip"), order=500),
                FlowContribution(chain="test-vm-expunge", flow=Named("release-ip"), order=500)]


async def test_chain_assembled_from_plugin_contributions(data_dir: Path) -> None:
    plugins = [NetworkFlows(), ComputeFlows(), StorageFlows()]
    async with ManagementNode(plugins=plugins, load_entry_points=False, data_dir=data_dir) as node:
        chain = node.flow_chain("test-vm-create")
        assert [f.flow_name for f in chain.flows] == [
            "allocate-host", "allocate-volume", "allocate-ip", "create-on-hypervisor"]
        assert (await chain.run())["ran"] == [
            "allocate-host", "allocate-volume", "allocate-ip", "create-on-hypervisor"]
        assert [f.flow_name for f in node.flow_chain("test-vm-expunge").flows] == ["release-ip"]
        assert node.flow_chain("no-such-chain").flows == []
        assert node.flow_chain("test-vm-create") is not chain  # each call makes a fresh chain

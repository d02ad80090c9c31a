"""The image store: AddImage from local files and from http on 127.0.0.1, verified; bad input
refused with an ErrorCode; failed or interrupted downloads leave neither a row nor a file."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from zstack_core import ApiJob, ManagementNode, MessageReply, ZStackError
from zstack_storage.models import ImageVO

from .conftest import HttpServer, qemu_img


async def add_image(node: ManagementNode, **params: Any) -> ApiJob:
    submitted = await node.submit_api(node.api.build("AddImage", params))
    if isinstance(submitted, MessageReply):
        raise ZStackError(submitted.error)  # type: ignore[arg-type]
    return await node.api.wait_job(submitted.id, timeout=30)


async def image_rows(node: ManagementNode) -> list[ImageVO]:
    return await node.db.run(lambda: list(ImageVO.select()))


def store_files(node: ManagementNode) -> list[str]:
    store = node.data_dir / "images"
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


async def assert_nothing_left(node: ManagementNode) -> None:
    assert await image_rows(node) == []
    assert store_files(node) == []


@pytest.mark.parametrize("kind", ["qcow2", "raw", "iso"])
async def test_add_image_from_a_local_file(storage_node: ManagementNode, kind: str, request: pytest.FixtureRequest) -> None:
    source: Path = request.getfixturevalue(f"{kind}_image")
    url = f"file://{source}" if kind == "raw" else str(source)
    job = await add_image(storage_node, name=f"tiny-{kind}", url=url, format=kind)
    assert job.state == "Succeeded", job.error
    inv = job.result["inventory"]  # type: ignore[index]
    assert inv["status"] == "Ready"
    assert inv["mediaType"] == ("ISO" if kind == "iso" else "RootVolumeTemplate")
    data = source.read_bytes()
    assert inv["actualSize"] == len(data)
    assert inv["sha256sum"] == hashlib.sha256(data).hexdigest()
    assert inv["md5sum"] == hashlib.md5(data).hexdigest()
    assert inv["size"] == (4 << 20 if kind == "qcow2" else len(data))  # qemu-img's virtual size
    stored = storage_node.data_dir / "images" / f"{inv['uuid']}.{kind}"
    assert stored.read_bytes() == data
    assert store_files(storage_node) == [stored.name]


async def test_http_download_verifies_checksums_and_reports_progress(
        storage_node: ManagementNode, http_server: HttpServer, raw_image: Path) -> None:
    data = raw_image.read_bytes() * 2  # 2 MiB in 32 slow chunks
    url = http_server.serve("/images/disk.raw", data, chunk=64 * 1024, delay=0.03)
    submitted = await storage_node.submit_api(storage_node.api.build("AddImage", {
        "name": "from-http", "url": url, "format": "raw",
        "sha256sum": hashlib.sha256(data).hexdigest(), "md5sum": hashlib.md5(data).hexdigest().upper()}))
    assert isinstance(submitted, ApiJob)
    seen = set()
    while (job := await storage_node.api.jobs.get(submitted.id)) and job.state == "Running":  # type: ignore[union-attr]
        if job.progress is not None:
            seen.add(job.progress)
        await asyncio.sleep(0.02)
    assert job is not None and job.state == "Succeeded", job and job.error
    assert job.progress == 100
    assert any(0 < p < 100 for p in seen), f"no intermediate progress seen: {sorted(seen)}"
    assert sorted(seen) == sorted(seen, key=int)  # never went backwards
    inv = job.result["inventory"]  # type: ignore[index]
    assert (storage_node.data_dir / "images" / f"{inv['uuid']}.raw").read_bytes() == data


@pytest.mark.parametrize("field", ["md5sum", "sha256sum"])
async def test_a_wrong_checksum_is_refused_and_leaves_nothing(
        storage_node: ManagementNode, http_server: HttpServer, qcow2_image: Path, field: str) -> None:
    url = http_server.serve("/tiny.qcow2", qcow2_image.read_bytes())
    wrong = {"md5sum": "0" * 32, "sha256sum": "f" * 64}[field]
    job = await add_image(storage_node, name="bad-sum", url=url, format="qcow2", **{field: wrong})
    assert job.state == "Failed"
    assert job.error is not None and job.error.code == "IMAGE.1002", job.error
    assert wrong in job.error.details
    await assert_nothing_left(storage_node)


async def test_an_interrupted_download_leaves_nothing(storage_node: ManagementNode, http_server: HttpServer,
                                                      raw_image: Path) -> None:
    data = raw_image.read_bytes()
    url = http_server.serve("/cut.raw", data, send_bytes=len(data) // 3)
    job = await add_image(storage_node, name="cut", url=url, format="raw")
    assert job.state == "Failed"
    assert job.error is not None and job.error.code in ("IMAGE.1001", "IMAGE.1003"), job.error
    await assert_nothing_left(storage_node)


async def test_a_server_announcing_more_than_it_sends_is_a_size_mismatch(
        storage_node: ManagementNode, http_server: HttpServer, raw_image: Path) -> None:
    data = raw_image.read_bytes()
    url = http_server.serve("/short.raw", data, content_length=len(data) + 4096, send_bytes=len(data))
    job = await add_image(storage_node, name="short", url=url, format="raw")
    assert job.state == "Failed"
    assert job.error is not None and job.error.code in ("IMAGE.1001", "IMAGE.1003"), job.error
    await assert_nothing_left(storage_node)


async def test_http_errors_and_unreachable_servers_fail_the_job(storage_node: ManagementNode,
                                                               http_server: HttpServer) -> None:
    missing = http_server.serve("/exists", b"x").replace("/exists", "/missing")
    job = await add_image(storage_node, name="404", url=missing, format="raw")
    assert job.error is not None and job.error.code == "IMAGE.1001" and "404" in job.error.details
    refused = "http://127.0.0.1:1/nothing-listens-here.qcow2"
    job = await add_image(storage_node, name="refused", url=refused, format="qcow2")
    assert job.error is not None and job.error.code == "IMAGE.1001" and "ConnectionError" in job.error.details
    await assert_nothing_left(storage_node)


@pytest.mark.parametrize(("params", "code", "field"), [
    ({"name": " "}, "SYS.1007", "name"),
    ({"format": "vmdk"}, "SYS.1007", "format"),
    ({"mediaType": "Floppy"}, "SYS.1007", "mediaType"),
    ({"format": "iso"}, "SYS.1007", "mediaType"),  # iso with the default RootVolumeTemplate... given below
    ({"mediaType": "ISO"}, "SYS.1007", "mediaType"),
    ({"md5sum": "xyz"}, "SYS.1007", "md5sum"),
    ({"sha256sum": "ab" * 31}, "SYS.1007", "sha256sum"),
    ({"url": "ftp://127.0.0.1/x.qcow2"}, "SYS.1007", "url"),
    ({"url": "relative/path.qcow2"}, "SYS.1007", "url"),
    ({"url": "http:///no-host"}, "SYS.1007", "url"),
    ({"url": "/no/such/file.qcow2"}, "IMAGE.1001", None),
    ({"url": "file://elsewhere/x.qcow2"}, "IMAGE.1000", None),
    ({"size": 3}, "SYS.1007", None),  # an unknown field
])
async def test_bad_input_is_refused_before_any_job(storage_node: ManagementNode, qcow2_image: Path,
                                                   params: dict[str, Any], code: str, field: str | None) -> None:
    body = {"name": "img", "url": str(qcow2_image), "format": "qcow2", **params}
    if params == {"format": "iso"}:
        body["mediaType"] = "RootVolumeTemplate"
    with pytest.raises(ZStackError) as info:
        await add_image(storage_node, **body)
    assert info.value.code == code, info.value.error
    if field is not None:
        assert info.value.error.opaque.get("field") == field
    await assert_nothing_left(storage_node)


async def test_a_file_that_is_not_its_declared_format_is_refused(storage_node: ManagementNode, qcow2_image: Path,
                                                                 raw_image: Path, tmp_path: Path) -> None:
    backed = tmp_path / "backed.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(qcow2_image), "-F", "qcow2", str(backed))
    cases = [(qcow2_image, "raw", "qcow2"), (raw_image, "qcow2", "raw"), (raw_image, "iso", "ISO 9660"),
             (backed, "qcow2", "backing file")]
    for source, declared, said in cases:
        job = await add_image(storage_node, name="liar", url=str(source), format=declared)
        assert job.error is not None and job.error.code == "IMAGE.1004", job.error
        assert said in job.error.details
    await assert_nothing_left(storage_node)


async def test_stopping_the_node_interrupts_a_download_and_leaves_nothing(
        data_dir: Path, http_server: HttpServer, raw_image: Path) -> None:
    import zstack_storage.plugin

    data = raw_image.read_bytes() * 8  # 8 MiB at 64 KiB per 50 ms: about 6 s
    url = http_server.serve("/slow.raw", data, delay=0.05)
    node = ManagementNode(plugins=[zstack_storage.plugin], load_entry_points=False, data_dir=data_dir)
    await node.start()
    submitted = await node.submit_api(node.api.build("AddImage", {"name": "slow", "url": url, "format": "raw"}))
    assert isinstance(submitted, ApiJob)
    store = node.data_dir / "images"
    for _ in range(200):
        part = list(store.glob("*.part"))
        if part and part[0].stat().st_size > 0:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the download never started")
    started = asyncio.get_running_loop().time()
    await node.stop()
    assert asyncio.get_running_loop().time() - started < 3, "stop waited for the whole download"
    assert list(store.iterdir()) == []

    async with ManagementNode(plugins=[zstack_storage.plugin], load_entry_points=False, data_dir=data_dir) as again:
        assert await image_rows(again) == []
        job = await again.api.jobs.get(submitted.id)
        assert job is not None and job.state == "Failed"
        assert job.error is not None and job.error.code == "IMAGE.1001" and "interrupted" in job.error.details


async def test_a_download_left_by_a_dead_node_is_swept_at_start(data_dir: Path) -> None:
    import zstack_storage.plugin

    async with ManagementNode(plugins=[zstack_storage.plugin], load_entry_points=False, data_dir=data_dir) as node:
        store = node.data_dir / "images"
        store.mkdir(parents=True, exist_ok=True)
        await node.db.run(lambda: ImageVO.create(uuid="d" * 32, name="dead", format="raw", status="Downloading",
                                                 install_path=str(store / f"{'d' * 32}.raw")))
    (store / f"{'d' * 32}.part").write_bytes(b"half")  # as a killed node leaves it
    async with ManagementNode(plugins=[zstack_storage.plugin], load_entry_points=False, data_dir=data_dir) as node:
        await assert_nothing_left(node)


async def test_delete_recover_expunge(storage_node: ManagementNode, qcow2_image: Path) -> None:
    job = await add_image(storage_node, name="img", url=str(qcow2_image), format="qcow2")
    uuid = job.result["inventory"]["uuid"]  # type: ignore[index]
    with pytest.raises(ZStackError) as info:
        await storage_node.api_call("ExpungeImage", imageUuid=uuid)
    assert info.value.code == "IMAGE.1005"  # only a deleted image is expunged

    await storage_node.api_call("DeleteImage", uuid=uuid)
    [found] = await storage_node.query.find("Image", [("status", "=", "Deleted")])
    assert found.uuid == uuid
    with pytest.raises(ZStackError) as info:
        await storage_node.api_call("DeleteImage", uuid=uuid)
    assert info.value.code == "IMAGE.1005"

    recovered = await storage_node.api_call("RecoverImage", imageUuid=uuid)
    assert recovered.inventory.status == "Ready"
    with pytest.raises(ZStackError) as info:
        await storage_node.api_call("RecoverImage", imageUuid=uuid)
    assert info.value.code == "IMAGE.1005"

    await storage_node.api_call("DeleteImage", uuid=uuid)
    await storage_node.api_call("ExpungeImage", imageUuid=uuid)
    await assert_nothing_left(storage_node)
    with pytest.raises(ZStackError) as info:
        await storage_node.api_call("RecoverImage", imageUuid=uuid)
    assert info.value.code == "SYS.1004"


async def test_direct_deletion_policy_expunges_at_once(storage_node: ManagementNode, raw_image: Path) -> None:
    await storage_node.api_call("UpdateGlobalConfig", category="image", name="deletionPolicy", value="Direct")
    job = await add_image(storage_node, name="img", url=str(raw_image), format="raw")
    await storage_node.api_call("DeleteImage", uuid=job.result["inventory"]["uuid"])  # type: ignore[index]
    await assert_nothing_left(storage_node)


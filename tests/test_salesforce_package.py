"""The deployable Salesforce package (console_adapters/salesforce_app/): every file is
well-formed, package.xml lists exactly what the folder holds, the flow and the strategy name Apex
that exists with its invocable variables, and the JSON the Apex builds (field names read from
the .cls files) is what a real gateway in front of a real service accepts.

No Salesforce org runs here: nothing is compiled or deployed (docs/adapters/salesforce.md says
what is unverified)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import httpx
from adapter_kit import error_of
from defusedxml import ElementTree
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from test_salesforce import ACK, api, case, contacts, gateway, message, outbound  # noqa: F401

from service.server import Running

APP = Path(__file__).resolve().parent.parent / "console_adapters" / "salesforce_app"
SOURCE = APP / "force-app" / "main" / "default"
MD = "{http://soap.sforce.com/2006/04/metadata}"
#: source-format folder → (metadata type, file suffix)
FOLDERS = {
    "classes": ("ApexClass", ".cls"),
    "flows": ("Flow", ".flow-meta.xml"),
    "recommendationStrategies": ("RecommendationStrategy", ".recommendationStrategy-meta.xml"),
    "namedCredentials": ("NamedCredential", ".namedCredential-meta.xml"),
    "externalCredentials": ("ExternalCredential", ".externalCredential-meta.xml"),
    "permissionsets": ("PermissionSet", ".permissionset-meta.xml"),
}


def apex(name: str) -> str:
    return (SOURCE / "classes" / f"{name}.cls").read_text()


def invocable_variables(source: str) -> dict[str, bool]:
    """Each @InvocableVariable's name → whether it is required."""
    found = re.findall(r"@InvocableVariable\((.*?)\)\s*global\s+\w+\s+(\w+);", source)
    return {name: "required=true" in args.replace(" ", "") for args, name in found}


def payload_keys(source: str, path: str) -> list[str]:
    """The keys of the JSON object the Apex posts to ``path``."""
    opening = re.escape(f"send('{path}', new Map<String, String>{{")
    block = re.search(opening + r"(.*?)\}\)", source, re.S)
    assert block is not None, f"no call to {path}"
    return re.findall(r"'(\w+)'\s*=>", block.group(1))


def members() -> set[tuple[str, str]]:
    out = set()
    for folder, (kind, suffix) in FOLDERS.items():
        for path in (SOURCE / folder).iterdir():
            assert path.name.endswith(suffix) or path.name.endswith(".cls-meta.xml"), path
            if path.name.endswith(suffix):
                out.add((kind, path.name.removesuffix(suffix)))
    return out


def test_every_metadata_file_is_well_formed_and_the_project_points_at_it() -> None:
    files = [p for p in APP.rglob("*") if p.is_file() and p.name != "sfdx-project.json"]
    xml = [p for p in files if p.name.endswith(".xml")]
    assert len(xml) >= 9
    for path in xml:
        root = ElementTree.parse(path).getroot()
        assert root.tag.startswith(MD), f"{path}: not in the metadata namespace"
    for cls in (SOURCE / "classes").glob("*.cls"):
        assert cls.with_name(cls.name + "-meta.xml").exists(), f"{cls.name} has no -meta.xml"
    project = json.loads((APP / "sfdx-project.json").read_text())
    assert [d["path"] for d in project["packageDirectories"]] == ["force-app"]
    assert (APP / "force-app").is_dir()


def test_package_xml_lists_every_component_in_the_folder_and_nothing_else() -> None:
    package = ElementTree.parse(APP / "manifest" / "package.xml").getroot()
    listed = {
        (t.findtext(f"{MD}name"), m.text)
        for t in package.findall(f"{MD}types")
        for m in t.findall(f"{MD}members")
    }
    assert listed == members()
    assert package.findtext(f"{MD}version") == "60.0"


def test_the_flow_calls_the_feedback_apex_with_its_invocable_variables() -> None:
    flow = ElementTree.parse(SOURCE / "flows" / "Offerdesk_Reaction.flow-meta.xml").getroot()
    assert flow.findtext(f"{MD}processType") == "AutoLaunchedFlow"
    # The Recommendation's ActionReference is this flow.
    assert "REACTION_FLOW = 'Offerdesk_Reaction'" in apex("OfferdeskRecommendations")
    calls = flow.findall(f"{MD}actionCalls")
    assert {c.findtext(f"{MD}name") for c in calls} == {"Record_accepted", "Record_rejected"}
    for call in calls:
        assert call.findtext(f"{MD}actionType") == "apex"
        source = apex(call.findtext(f"{MD}actionName") or "")
        assert "@InvocableMethod" in source
        variables = invocable_variables(source)
        given = {p.findtext(f"{MD}name") for p in call.findall(f"{MD}inputParameters")}
        assert given <= set(variables), given - set(variables)
        assert {v for v, required in variables.items() if required} <= given
        reaction = next(
            p.findtext(f"{MD}value/{MD}stringValue")
            for p in call.findall(f"{MD}inputParameters")
            if p.findtext(f"{MD}name") == "reaction"
        )
        assert reaction == call.findtext(f"{MD}name", "").removeprefix("Record_").capitalize()
    inputs = {
        v.findtext(f"{MD}name"): v.findtext(f"{MD}dataType")
        for v in flow.findall(f"{MD}variables")
        if v.findtext(f"{MD}isInput") == "true"
    }
    assert inputs == {
        "recordId": "String",
        "inputRecommendation": "SObject",
        "isRecommendationAccepted": "Boolean",
    }
    # Every element a connector points at exists.
    names = {e.findtext(f"{MD}name") for e in flow if e.findtext(f"{MD}name")}
    targets = {t.text for t in flow.iter(f"{MD}targetReference")}
    assert targets <= names, targets - names


def test_the_strategy_generates_with_the_invocable_method_of_the_apex_class() -> None:
    path = SOURCE / "recommendationStrategies" / "Offerdesk_Offer.recommendationStrategy-meta.xml"
    strategy = ElementTree.parse(path).getroot()
    assert strategy.findtext(f"{MD}contextRecordType") == "Case"
    [generate] = strategy.findall(f"{MD}invocableAction")
    assert generate.findtext(f"{MD}isGenerator") == "true"
    assert generate.findtext(f"{MD}type") == "apex"
    source = apex(generate.findtext(f"{MD}action") or "")
    annotation = r"@InvocableMethod\((?:[^()]|\([^()]*\))*\)"  # its labels hold parentheses
    assert re.search(annotation + r"\s*global static List<List<Recommendation>> \w+\(", source)
    variables = invocable_variables(source)
    arguments = {a.findtext(f"{MD}name") for a in generate.findall(f"{MD}argument")}
    assert arguments == {v for v, required in variables.items() if required} == {"caseId"}
    nodes = {n.findtext(f"{MD}name") for n in strategy if n.findtext(f"{MD}name")}
    children = {c.text for c in strategy.iter(f"{MD}childNode")}
    assert generate.findtext(f"{MD}name") in children and children <= nodes


def test_the_permission_set_grants_the_classes_and_the_credential_principal() -> None:
    permissions = ElementTree.parse(
        SOURCE / "permissionsets" / "Offerdesk_Agent.permissionset-meta.xml"
    ).getroot()
    classes = {c.findtext(f"{MD}apexClass") for c in permissions.findall(f"{MD}classAccesses")}
    assert classes == {"OfferdeskFeedback", "OfferdeskRecommendations"}
    principal = permissions.findtext(
        f"{MD}externalCredentialPrincipalAccesses/{MD}externalCredentialPrincipal"
    )
    credential = ElementTree.parse(
        SOURCE / "externalCredentials" / "Offerdesk_Auth.externalCredential-meta.xml"
    ).getroot()
    named = [
        p.findtext(f"{MD}parameterName")
        for p in credential.findall(f"{MD}externalCredentialParameters")
        if p.findtext(f"{MD}parameterType") == "NamedPrincipal"
    ]
    assert principal == f"Offerdesk_Auth-{named[0]}"
    assert "callout:Offerdesk/" not in apex("OfferdeskRecommendations")  # path added per call
    assert "'callout:Offerdesk' + path" in apex("OfferdeskRecommendations")


def recorded(server: Running, decision_id: str) -> pb.DecideResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return pb_grpc.OfferDeskStub(channel).GetDecision(
            pb.GetDecisionRequest(decision_id=decision_id)
        )


def test_the_json_the_apex_builds_is_what_the_gateway_accepts(
    gateway: str,  # noqa: F811
    server: Running,
    contacts: list[str],  # noqa: F811
) -> None:
    recommendations, feedback = apex("OfferdeskRecommendations"), apex("OfferdeskFeedback")
    generate_keys = payload_keys(recommendations, "/salesforce/generate")
    feedback_keys = payload_keys(feedback, "/salesforce/feedback")
    read = set(re.findall(r"body\.get\('(\w+)'\)", recommendations))
    assert generate_keys == ["case_id"]
    assert set(feedback_keys) == {
        "external_id",
        "case_id",
        "reaction",
        "decline_reason",
        "agent_id",
    }
    assert {"offer", "Name", "Description", "ExternalId"} <= read

    offers = []
    for i, contact in enumerate(contacts[:80]):
        case_id = f"5000000000{i:05d}BBB"
        assert outbound(gateway, message(case(case_id, contact))).content == ACK
        shown = api(gateway, "generate", dict.fromkeys(generate_keys, case_id))
        assert shown.status_code == 200, shown.text
        if shown.json()["offer"]:
            assert read <= set(shown.json()), read - set(shown.json())
            offers.append((case_id, shown.json()))
            if len(offers) == 2:
                break
    assert len(offers) == 2, "fewer than two offers in 80 closed cases"

    agent = "005000000000001AAA"
    (_, first), (second_case, second) = offers
    # A Reject from the flow: the Recommendation's ExternalId, no reason (Salesforce asks none).
    rejected = dict(zip(feedback_keys, [""] * len(feedback_keys), strict=True))
    rejected |= {"external_id": first["ExternalId"], "reaction": "Rejected", "agent_id": agent}
    reply = api(gateway, "feedback", rejected)
    assert reply.status_code == 200, reply.text
    assert recorded(server, first["decision_id"]).outcome == pb.DECLINED
    assert server.desk.store.find("outcome", first["decision_id"]).body["decline_reason"] == "other"
    # An Accept from a flow that got only the case (recordId): its latest decision.
    accepted = dict.fromkeys(feedback_keys, "") | {
        "case_id": second_case,
        "reaction": "Accepted",
        "agent_id": agent,
    }
    reply = api(gateway, "feedback", accepted)
    assert reply.status_code == 200, reply.text
    assert recorded(server, second["decision_id"]).outcome == pb.ACCEPTED

    neither = api(gateway, "feedback", dict.fromkeys(feedback_keys, "") | {"reaction": "Accepted"})
    assert neither.status_code == 400 and error_of(neither)["field"] == "external_id"
    unknown = api(
        gateway,
        "feedback",
        dict.fromkeys(feedback_keys, "")
        | {"case_id": "500999999999999AAA", "reaction": "Accepted", "agent_id": agent},
    )
    assert unknown.status_code == 404
    bad = api(
        gateway,
        "feedback",
        rejected | {"external_id": second["ExternalId"], "decline_reason": "meh"},
    )
    assert bad.status_code == 400 and error_of(bad)["field"] == "decline_reason"
    assert recorded(server, second["decision_id"]).outcome == pb.ACCEPTED
    assert httpx.post(f"{gateway}/salesforce/feedback", json=accepted).status_code == 401

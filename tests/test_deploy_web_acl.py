"""The Fargate template's optional AWS WAF web ACL (WebAcl=true): what it creates, that it is
on the load balancer, that no rule of it can block a request Twilio signed, and that the stack
lints either way.

Twilio sends every call's webhooks and relay socket from its own addresses, which are neither
few nor published: a rule that could block a signed request (a per-address limit on all
requests, an IP list Twilio's shared addresses may land on) would, at a high enough call
volume or on a bad day, fail every call from that address. So each rule's statement is
evaluated here for a signed and an unsigned request, with every rate assumed exceeded and every
list assumed to hold the address: anything the evaluator cannot decide counts as "could
block". Offline, as the other template tests: nothing contacts AWS.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import pytest

from tests.test_deploy import CLOUD, TEST_PARAMETERS, Resolver, _lint, _template, _translate

pytestmark = pytest.mark.timeout(120)

WAF_TYPES = ("AWS::WAFv2::WebACL", "AWS::WAFv2::WebACLAssociation")
SIGNED = {"x-twilio-signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "user-agent": "TwilioProxy/1.1"}
UNSIGNED = {"user-agent": "curl/8.5.0"}
SIZE_OPERATORS = {"EQ": int.__eq__, "NE": int.__ne__, "LE": int.__le__, "LT": int.__lt__,
                  "GE": int.__ge__, "GT": int.__gt__}


def _created(template: Mapping[str, Any], web_acl: str) -> dict[str, dict[str, Any]]:
    """The resources the stack creates with WebAcl=``web_acl``."""
    resolver = Resolver(template, {**TEST_PARAMETERS, "WebAcl": web_acl})
    return {name: resource for name, resource in template["Resources"].items()
            if "Condition" not in resource or resolver.condition(resource["Condition"])}


def _waf_alarms(resources: Mapping[str, Any]) -> list[str]:
    return [name for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"
            and r["Properties"].get("Namespace") == "AWS/WAFV2"]


def _matches(statement: Mapping[str, Any], headers: Mapping[str, str]) -> bool | None:
    """Whether a WAF statement matches a request with these headers: True, False, or None
    when it depends on what this cannot know (the address, a managed list, the rest of the
    request). A rate-based or rule-group statement matches what its scope-down matches (the
    rate exceeded, the address listed)."""
    (kind, body), = statement.items()
    if kind in ("RateBasedStatement", "ManagedRuleGroupStatement",
                "RuleGroupReferenceStatement"):
        scope = body.get("ScopeDownStatement")
        return True if scope is None else _matches(scope, headers)
    if kind == "NotStatement":
        inner = _matches(body["Statement"], headers)
        return None if inner is None else not inner
    if kind in ("AndStatement", "OrStatement"):
        results = [_matches(s, headers) for s in body["Statements"]]
        decided = kind == "OrStatement"       # what one result decides: And's False, Or's True
        if decided in results:
            return decided
        return None if None in results else not decided
    if kind == "SizeConstraintStatement" and "SingleHeader" in body["FieldToMatch"] and all(
            t["Type"] == "NONE" for t in body["TextTransformations"]):
        name = body["FieldToMatch"]["SingleHeader"]["Name"].lower()
        if name not in headers:
            return False                  # a missing component matches no size (AWS's guide)
        return SIZE_OPERATORS[body["ComparisonOperator"]](len(headers[name]), body["Size"])
    return None


def _could_block(rule: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    blocks = "Block" in rule.get("Action", {}) or "None" in rule.get("OverrideAction", {})
    return blocks and _matches(rule["Statement"], headers) is not False


def _web_acl(template: Mapping[str, Any]) -> dict[str, Any]:
    acl, = (r for r in template["Resources"].values() if r["Type"] == "AWS::WAFv2::WebACL")
    return acl  # type: ignore[no-any-return]


def test_web_acl_is_off_by_default_and_off_creates_none() -> None:
    """An ALB takes one web ACL: a stack must not displace the account's by default."""
    template = _template(CLOUD)
    parameter = template["Parameters"]["WebAcl"]
    assert (parameter["Default"], parameter["AllowedValues"]) == ("false", ["true", "false"])
    off = _created(template, "false")
    assert not [name for name, r in off.items() if r["Type"].startswith("AWS::WAFv2::")]
    assert not _waf_alarms(off)
    # the transform keeps the condition: the deployed template creates none either
    transformed = _translate(CLOUD)["Resources"]
    waf = {name for name, r in transformed.items() if r["Type"].startswith("AWS::WAFv2::")}
    waf |= set(_waf_alarms(transformed))
    assert len(waf) == 3, waf                     # the web ACL, its association, its alarm
    assert all("Condition" in transformed[name] for name in waf)


def test_web_acl_on_guards_the_load_balancer() -> None:
    template = _template(CLOUD)
    on = _created(template, "true")
    acls = {name: r for name, r in on.items() if r["Type"] == "AWS::WAFv2::WebACL"}
    associations = [r for r in on.values() if r["Type"] == "AWS::WAFv2::WebACLAssociation"]
    (acl_name, acl), = acls.items()
    association, = associations
    balancer, = (n for n, r in on.items()
                 if r["Type"] == "AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert association["Properties"] == {"ResourceArn": {"Ref": balancer},
                                         "WebACLArn": {"Fn::GetAtt": [acl_name, "Arn"]}}
    properties = acl["Properties"]
    assert properties["Scope"] == "REGIONAL"          # an ALB's; CLOUDFRONT cannot attach
    assert properties["DefaultAction"] == {"Allow": {}}
    rules = properties["Rules"]
    assert rules
    for config in [properties["VisibilityConfig"]] + [r["VisibilityConfig"] for r in rules]:
        assert config["CloudWatchMetricsEnabled"] is True
        assert config["SampledRequestsEnabled"] is True
    assert len({r["Priority"] for r in rules}) == len({r["Name"] for r in rules}) == len(rules)
    for rule in rules:
        # a rule group takes an OverrideAction, a statement of one's own an Action, never both
        grouped = "ManagedRuleGroupStatement" in rule["Statement"]
        assert ("OverrideAction" in rule, "Action" in rule) == (grouped, not grouped), rule
    rate, = (r["Statement"]["RateBasedStatement"] for r in rules
             if "RateBasedStatement" in r["Statement"])
    assert rate["AggregateKeyType"] == "IP"
    assert rate["Limit"] == {"Ref": "WebAclUnsignedRequestsPerIp"}
    limit = template["Parameters"]["WebAclUnsignedRequestsPerIp"]
    assert limit["MinValue"] >= 10                     # the least AWS WAF takes
    assert limit["MinValue"] <= limit["Default"]
    reputation, = (r["Statement"]["ManagedRuleGroupStatement"] for r in rules
                   if "ManagedRuleGroupStatement" in r["Statement"])
    assert (reputation["VendorName"], reputation["Name"]) == (
        "AWS", "AWSManagedRulesAmazonIpReputationList")


def test_no_rule_can_block_a_request_twilio_signed() -> None:
    rules = _web_acl(_template(CLOUD))["Properties"]["Rules"]
    blocking = [r["Name"] for r in rules if _could_block(r, SIGNED)]
    assert not blocking, (
        f"the web ACL's rules {blocking} could block a request with X-Twilio-Signature: "
        "Twilio's addresses carry every call, so a rule must be scoped down to requests "
        "without the header (a NotStatement of a size > 0 on it)")
    # and the rules do something: each one can block an unsigned request
    assert all(_could_block(r, UNSIGNED) for r in rules)
    assert all(_could_block(r, {**UNSIGNED, "x-twilio-signature": ""}) for r in rules)


def test_the_evaluator_sees_a_rule_that_would_throttle_twilio() -> None:
    """The check above fails on the rule this template must not have: a per-address limit on
    every request, or a list with no scope-down."""
    rules = _web_acl(_template(CLOUD))["Properties"]["Rules"]
    for rule in rules:
        unscoped = copy.deepcopy(rule)
        unscoped["Statement"][next(iter(rule["Statement"]))].pop("ScopeDownStatement")
        assert _could_block(unscoped, SIGNED), rule["Name"]


@pytest.mark.parametrize("web_acl", ["true", "false"])
def test_template_with_either_setting_passes_cfn_lint(web_acl: str) -> None:
    template = copy.deepcopy(_template(CLOUD))
    template["Parameters"]["WebAcl"]["Default"] = web_acl
    assert _lint(json.dumps(template)) == []


def test_flood_alarm_reads_what_the_web_acl_publishes() -> None:
    """WAF names its metrics' dimensions after the web ACL's and the rule's MetricName: an
    alarm on other values would never have data, and never fire."""
    template = _template(CLOUD)
    resolver = Resolver(template, {**TEST_PARAMETERS, "WebAcl": "true"})
    assert _waf_alarms(_created(template, "false")) == []
    name, = _waf_alarms(_created(template, "true"))
    alarm = template["Resources"][name]["Properties"]
    acl = _web_acl(template)["Properties"]
    rate_rule, = (r for r in acl["Rules"] if "RateBasedStatement" in r["Statement"])
    dimensions = {d["Name"]: resolver.resolve(d["Value"]) for d in alarm["Dimensions"]}
    assert dimensions == {"WebACL": resolver.resolve(acl["VisibilityConfig"]["MetricName"]),
                          "Rule": rate_rule["VisibilityConfig"]["MetricName"],
                          "Region": "eu-west-1"}
    assert (alarm["MetricName"], alarm["Statistic"], alarm["Period"]) == (
        "BlockedRequests", "Sum", 300)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["TreatMissingData"] == "notBreaching"

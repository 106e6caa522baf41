"""The mapping stage: declarative, validated rules from decoded Avro events to profile updates.

`load_rules` validates a rules file against the event schema (every problem at once),
`Mapper.map` turns one decoded event into a `ProfileUpdate` (or None: no rule matched), and
`event_from_json` gives a JSON event the shape the Avro decoder produces, for previews and tests.
"""

from consumer.mapping.event_json import event_from_json
from consumer.mapping.loader import Expression, IdentitySource, Rule, RuleSet, load_rules
from consumer.mapping.mapper import Mapper, ProfileUpdate
from consumer.mapping.render import render

__all__ = [
    "Expression",
    "IdentitySource",
    "Mapper",
    "ProfileUpdate",
    "Rule",
    "RuleSet",
    "event_from_json",
    "load_rules",
    "render",
]

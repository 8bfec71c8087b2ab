package main

// What the kubebuilder markers say: their arguments, OpenAPI validation and CEL rules.

import (
	"regexp"
	"strings"
)

// markerValues returns the arguments of every marker with this name: what follows
// "name=" ("kubebuilder:default=Retain") or "name:" ("kubebuilder:printcolumn:name=...").
func markerValues(markers []string, name string) []string {
	var vs []string
	for _, m := range markers {
		switch {
		case m == name:
			vs = append(vs, "")
		case strings.HasPrefix(m, name+"=") || strings.HasPrefix(m, name+":"):
			vs = append(vs, m[len(name)+1:])
		}
	}
	return vs
}

func hasMarker(markers []string, name string) bool { return len(markerValues(markers, name)) > 0 }

// validation renders the OpenAPI markers (enum, bounds, pattern, list type).
func validation(markers, consts []string) []string {
	var out []string
	const v = "kubebuilder:validation:"
	if e := markerValues(markers, v+"Enum"); len(e) > 0 {
		out = append(out, "one of "+codeList(strings.Split(e[0], ";")))
	}
	for _, m := range []struct{ marker, label string }{
		{"Minimum", "minimum"}, {"Maximum", "maximum"},
		{"MinLength", "min length"}, {"MaxLength", "max length"},
		{"MinItems", "min items"}, {"MaxItems", "max items"},
		{"Pattern", "pattern"},
		{"items:MinLength", "each min length"}, {"items:MaxLength", "each max length"},
		{"items:Pattern", "each matches"},
	} {
		for _, val := range markerValues(markers, v+m.marker) {
			if strings.HasSuffix(m.marker, "Pattern") {
				val = "`" + strings.Trim(val, "`") + "`"
			}
			out = append(out, m.label+" "+val)
		}
	}
	for _, lt := range markerValues(markers, "listType") {
		switch lt {
		case "map":
			keys := markerValues(markers, "listMapKey")
			out = append(out, "list keyed by "+codeList(keys))
		case "set":
			out = append(out, "no duplicates")
		}
	}
	return out
}

var celRe = regexp.MustCompile(`rule="((?:[^"\\]|\\.)*)"(?:,message="((?:[^"\\]|\\.)*)")?`)

// celRules returns the messages of a type's or field's CEL rules (the rule itself when
// it has no message).
func celRules(markers []string) []string {
	var out []string
	for _, m := range markerValues(markers, "kubebuilder:validation:XValidation") {
		sub := celRe.FindStringSubmatch(m)
		if sub == nil {
			continue
		}
		msg := sub[2]
		if msg == "" {
			msg = "`" + sub[1] + "`"
		} else {
			msg = strings.ReplaceAll(msg, `\"`, `"`)
		}
		out = append(out, msg)
	}
	return out
}

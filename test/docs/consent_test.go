package docs

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"customerloop.dev/customerloop/pipeline"
)

var consentExampleRe = regexp.MustCompile("(?s)<!-- consent: (accepted|refused) -->\\s*\n```json\n(.*?)```")

// The consent messages of docs/messages.md are accepted or refused as the page says, by
// the sample loop's stream names.
func TestConsentExamples(t *testing.T) {
	doc := readFile(t, filepath.Join(repoRoot(t), "docs", "messages.md"))
	var names []string
	for _, s := range sampleStreams(t) {
		names = append(names, s.Name)
	}
	n := 0
	for _, m := range consentExampleRe.FindAllStringSubmatch(doc, -1) {
		for _, msg := range strings.Split(strings.TrimSpace(m[2]), "\n") {
			n++
			_, err := pipeline.ParseConsent([]byte(msg), names)
			if (err == nil) != (m[1] == "accepted") {
				t.Errorf("docs/messages.md: consent message documented as %s, parser says %v:\n%s", m[1], err, msg)
			}
		}
	}
	if n < 4 {
		t.Fatalf("found %d consent examples in docs/messages.md; the annotations may have changed shape", n)
	}
}

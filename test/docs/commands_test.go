package docs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// command is one command of a ```sh or ```console block, split into shell words.
type command struct {
	file  string
	line  int
	words []string
}

func (c command) String() string {
	return fmt.Sprintf("%s:%d: %s", c.file, c.line, strings.Join(c.words, " "))
}

// shellWords splits a command line into pipeline segments of words, honouring quotes,
// backslashes and comments. open reports an unclosed quote: the command goes on on the
// next line.
func shellWords(s string) (segments [][]string, open bool) {
	var seg []string
	var cur strings.Builder
	inWord := false
	var quote rune
	end := func() {
		if inWord {
			seg = append(seg, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	cut := func() {
		end()
		if len(seg) > 0 {
			segments = append(segments, seg)
		}
		seg = nil
	}
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else if r == '\\' && quote == '"' && i+1 < len(rs) {
				i++
				cur.WriteRune(rs[i])
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == '\\' && i+1 < len(rs):
			i++
			if rs[i] != '\n' {
				cur.WriteRune(rs[i])
				inWord = true
			}
		case r == ' ' || r == '\t' || r == '\n':
			end()
		case r == '#' && !inWord:
			// A comment runs to the end of its line.
			for i+1 < len(rs) && rs[i+1] != '\n' {
				i++
			}
		case r == '|' || r == ';' || r == '&':
			for i+1 < len(rs) && (rs[i+1] == '|' || rs[i+1] == '&') {
				i++
			}
			cut()
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, true
	}
	cut()
	return segments, false
}

var (
	fenceRe     = regexp.MustCompile("^\\s*```\\s*([a-z]*)")
	envAssignRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
)

// documentedCommands returns every command of the ```sh, ```bash and ```console blocks
// of README.md and docs/*.md. In a console block only lines starting with "$ " are
// commands; the rest is output.
func documentedCommands(t testing.TB) []command {
	t.Helper()
	var out []command
	for _, f := range docFiles(t) {
		lines := strings.Split(readFile(t, filepath.Join(repoRoot(t), f)), "\n")
		lang := ""
		inBlock := false
		var pending string
		pendingLine := 0
		for i, l := range lines {
			if m := fenceRe.FindStringSubmatch(l); m != nil {
				if inBlock {
					inBlock, pending = false, ""
				} else {
					inBlock, lang = true, m[1]
				}
				continue
			}
			if !inBlock || (lang != "sh" && lang != "bash" && lang != "console") {
				continue
			}
			if pending == "" {
				if lang == "console" {
					rest, ok := strings.CutPrefix(l, "$ ")
					if !ok {
						continue
					}
					l = rest
				}
				pendingLine = i + 1
				pending = l
			} else {
				pending += "\n" + l
			}
			if strings.HasSuffix(strings.TrimRight(pending, " "), "\\") {
				continue
			}
			segs, open := shellWords(pending)
			if open {
				continue
			}
			for _, s := range segs {
				// VAR=value words before a command set its environment.
				for len(s) > 0 && envAssignRe.MatchString(s[0]) {
					s = s[1:]
				}
				if len(s) > 0 {
					out = append(out, command{file: f, line: pendingLine, words: s})
				}
			}
			pending = ""
		}
	}
	return out
}

// tool is a documented program and how to find it.
type tool struct {
	name string
	path string // empty when it is not available
	why  string // how to make it available
}

func requireStack() bool { return os.Getenv("CUSTOMERLOOP_REQUIRE_STACK") == "1" }

func (tl tool) need(t *testing.T) {
	t.Helper()
	if tl.path != "" {
		return
	}
	if requireStack() {
		t.Fatalf("%s is required (CUSTOMERLOOP_REQUIRE_STACK=1) but not available: %s", tl.name, tl.why)
	}
	t.Skipf("%s not available, its documented commands are not checked: %s (CUSTOMERLOOP_REQUIRE_STACK=1 makes this a failure)", tl.name, tl.why)
}

func commandsOf(cmds []command, name string) []command {
	var out []command
	for _, c := range cmds {
		if filepath.Base(c.words[0]) == name {
			out = append(out, c)
		}
	}
	return out
}

// cobraHelp reads the subcommands and flags of a kubectl- or helm-style command from
// its --help output, with results cached per subcommand path.
type cobraHelp struct {
	bin    string
	global map[string]bool // flag -> takes a value
	mu     sync.Mutex
	cache  map[string]helpPage
}

type helpPage struct {
	subcommands map[string]bool
	flags       map[string]bool // flag -> takes a value
}

var (
	helpFlagRe = regexp.MustCompile(`(?m)^\s+(?:(-[A-Za-z0-9]), )?(--[A-Za-z0-9][\w-]*)(?:=(\S*)| ([a-zA-Z][\w.]*))?(?:\s|:|$)`)
	helpCmdRe  = regexp.MustCompile(`^\s+([a-z][\w-]*)\s`)
)

func parseHelp(text string) helpPage {
	p := helpPage{subcommands: map[string]bool{}, flags: map[string]bool{}}
	inCmds := false
	for _, l := range strings.Split(text, "\n") {
		if l != "" && l[0] != ' ' && l[0] != '\t' {
			inCmds = strings.Contains(l, "Commands") && strings.HasSuffix(strings.TrimSpace(l), ":")
			continue
		}
		if inCmds {
			if m := helpCmdRe.FindStringSubmatch(l); m != nil {
				p.subcommands[m[1]] = true
			}
		}
	}
	for _, m := range helpFlagRe.FindAllStringSubmatch(text, -1) {
		takes := m[4] != "" || (m[3] != "" && !strings.HasPrefix(m[3], "false") && !strings.HasPrefix(m[3], "true"))
		p.flags[m[2]] = takes
		if m[1] != "" {
			p.flags[m[1]] = takes
		}
	}
	return p
}

func (h *cobraHelp) page(t *testing.T, path []string) (helpPage, error) {
	t.Helper()
	key := strings.Join(path, " ")
	h.mu.Lock()
	defer h.mu.Unlock()
	if p, ok := h.cache[key]; ok {
		return p, nil
	}
	cmd := exec.Command(h.bin, append(append([]string{}, path...), "--help")...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(t.TempDir(), "none"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return helpPage{}, fmt.Errorf("%s %s --help: %v\n%s", filepath.Base(h.bin), key, err, out)
	}
	p := parseHelp(string(out))
	h.cache[key] = p
	return p, nil
}

// flagName is the flag an argument sets, "" for a positional argument.
func flagName(arg string) string {
	if !strings.HasPrefix(arg, "-") || arg == "-" {
		return ""
	}
	name, _, _ := strings.Cut(arg, "=")
	if !strings.HasPrefix(name, "--") && len(name) > 2 {
		name = name[:2] // a shorthand with its value attached: -ojson
	}
	return name
}

// check resolves the command's subcommand path from its help pages and checks that
// every flag it uses is one the final subcommand (or every command) takes. It returns
// the subcommand path.
func (h *cobraHelp) check(t *testing.T, c command) ([]string, error) {
	t.Helper()
	args := c.words[1:]
	var path []string
	page, err := h.page(t, nil)
	if err != nil {
		return nil, err
	}
	known := func(f string) (takes, ok bool) {
		if v, ok := page.flags[f]; ok {
			return v, true
		}
		v, ok := h.global[f]
		return v, ok
	}
	descending := true
	var flags []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if f := flagName(a); f != "" {
			flags = append(flags, f)
			if takes, ok := known(f); ok && takes && !strings.Contains(a, "=") && len(a) == len(f) {
				i++ // its value
			}
			continue
		}
		if !descending {
			continue
		}
		if page.subcommands[a] {
			path = append(path, a)
			if page, err = h.page(t, path); err != nil {
				return nil, err
			}
			continue
		}
		if len(path) == 0 {
			return nil, fmt.Errorf("%q is not a %s command", a, filepath.Base(h.bin))
		}
		descending = false
	}
	if len(path) == 0 {
		return nil, errors.New("no subcommand")
	}
	var bad []string
	for _, f := range flags {
		if _, ok := known(f); !ok {
			bad = append(bad, f)
		}
	}
	if len(bad) > 0 {
		return path, fmt.Errorf("%s %s takes no flag %s", filepath.Base(h.bin), strings.Join(path, " "), strings.Join(bad, ", "))
	}
	return path, nil
}

// Every kubectl command in the docs names real subcommands and flags of kubectl (the one
// built beside kube-apiserver for envtest), and those that create an object offline
// (kubectl create ...) produce it with --dry-run=client.
func TestKubectlCommands(t *testing.T) {
	cmds := commandsOf(documentedCommands(t), "kubectl")
	if len(cmds) < 10 {
		t.Fatalf("found %d kubectl commands in the docs; the extraction is broken", len(cmds))
	}
	kubectl := tool{name: "kubectl", why: "set KUBEBUILDER_ASSETS to the envtest binaries (make control-plane)"}
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "kubectl")); err == nil {
			kubectl.path = filepath.Join(dir, "kubectl")
		}
	}
	kubectl.need(t)
	h := &cobraHelp{bin: kubectl.path, cache: map[string]helpPage{}}
	global, err := exec.Command(kubectl.path, "options").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl options: %v\n%s", err, global)
	}
	h.global = parseHelp(string(global)).flags
	if len(h.global) < 10 {
		t.Fatalf("read %d global flags from kubectl options; the help format changed", len(h.global))
	}
	for _, c := range cmds {
		if len(c.words) > 1 && c.words[1] == "customerloop" {
			continue // the plugin: TestCustomerloopCommands checks it
		}
		path, err := h.check(t, c)
		if err != nil {
			t.Errorf("%s\n  %v", c, err)
			continue
		}
		// create token asks the API server for a token: it has no offline dry run.
		if path[0] == "create" && len(path) > 1 && path[1] != "token" {
			args := append(append([]string{}, c.words[1:]...), "--dry-run=client", "-o", "yaml")
			cmd := exec.Command(kubectl.path, args...)
			cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(t.TempDir(), "none"))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s\n  with --dry-run=client: %v\n%s", c, err, out)
			}
		}
	}
	t.Logf("checked %d kubectl commands", len(cmds))
}

// Every helm command names real subcommands and flags, and a documented install renders
// with its values (helm template, same arguments).
func TestHelmCommands(t *testing.T) {
	cmds := commandsOf(documentedCommands(t), "helm")
	if len(cmds) < 2 {
		t.Fatalf("found %d helm commands in the docs; the extraction is broken", len(cmds))
	}
	helm := tool{name: "helm", path: os.Getenv("HELM"), why: "set HELM to a helm 3 binary (make test builds bin/helm-VERSION)"}
	helm.need(t)
	h := &cobraHelp{bin: helm.path, cache: map[string]helpPage{}, global: map[string]bool{}}
	for _, c := range cmds {
		path, err := h.check(t, c)
		if err != nil {
			t.Errorf("%s\n  %v", c, err)
			continue
		}
		if path[0] == "install" {
			args := append([]string{"template"}, c.words[2:]...)
			cmd := exec.Command(helm.path, args...)
			cmd.Dir = repoRoot(t)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s\n  as helm template: %v\n%s", c, err, out)
			}
		}
	}
	t.Logf("checked %d helm commands", len(cmds))
}

// Every customerloop command, and every kubectl customerloop command (the binary as a
// kubectl plugin), names real subcommands of the binary built from cmd/customerloop and
// only flags those subcommands take, read from their --help as for kubectl. The same
// holds for customerloop-dev, the development binary (dev, broker).
func TestCustomerloopCommands(t *testing.T) {
	all := documentedCommands(t)
	cmds := commandsOf(all, "customerloop")
	for _, c := range commandsOf(all, "kubectl") {
		if len(c.words) > 1 && c.words[1] == "customerloop" {
			cmds = append(cmds, command{file: c.file, line: c.line, words: c.words[1:]})
		}
	}
	if len(cmds) < 3 {
		t.Fatalf("found %d customerloop commands in the docs; the extraction is broken", len(cmds))
	}
	checkCommands(t, "customerloop", cmds, "report", "manager")
	dev := commandsOf(all, "customerloop-dev")
	if len(dev) < 2 {
		t.Fatalf("found %d customerloop-dev commands in the docs, want its dev and broker", len(dev))
	}
	checkCommands(t, "customerloop-dev", dev, "dev", "broker")
}

// checkCommands builds cmd/<name> and checks the documented commands against its help;
// its root help must list the given subcommands.
func checkCommands(t *testing.T, name string, cmds []command, subcommands ...string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	build := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", name, err, out)
	}
	h := &cobraHelp{bin: bin, cache: map[string]helpPage{}, global: map[string]bool{}}
	root, err := h.page(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subcommands {
		if !root.subcommands[s] {
			t.Fatalf("read no %s command from %s --help: %v", s, name, root.subcommands)
		}
	}
	for _, c := range cmds {
		if _, err := h.check(t, c); err != nil {
			t.Errorf("%s\n  %v", c, err)
		}
	}
	t.Logf("checked %d %s commands", len(cmds), name)
}

var makeTargetRe = regexp.MustCompile(`(?m)^([A-Za-z0-9][\w.-]*)\s*:([^=]|$)`)

// Every make command names targets the Makefile has.
func TestMakeCommands(t *testing.T) {
	cmds := commandsOf(documentedCommands(t), "make")
	if len(cmds) < 3 {
		t.Fatalf("found %d make commands in the docs; the extraction is broken", len(cmds))
	}
	targets := map[string]bool{}
	for _, m := range makeTargetRe.FindAllStringSubmatch(readFile(t, filepath.Join(repoRoot(t), "Makefile")), -1) {
		targets[m[1]] = true
	}
	for _, c := range cmds {
		for _, a := range c.words[1:] {
			if strings.HasPrefix(a, "-") || strings.Contains(a, "=") {
				continue
			}
			if !targets[a] {
				t.Errorf("%s\n  the Makefile has no target %q", c, a)
			}
		}
	}
	t.Logf("checked %d make commands", len(cmds))
}

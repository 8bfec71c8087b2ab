package pipeline

import (
	"fmt"
	"regexp"
)

// identPattern is the one shape of name CustomerLoop lets reach SQL. The CRD enforces the
// same pattern (lower case there); quoting is a second line, not the first.
var identPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// ValidIdent reports whether name may be used as a ClickHouse identifier.
func ValidIdent(name string) error {
	if !identPattern.MatchString(name) {
		return fmt.Errorf("%q is not a valid identifier (letters, digits and _, starting with a letter or _, at most 128)", name)
	}
	return nil
}

// QuoteIdent returns name quoted for ClickHouse. It is the only place where a name from a
// spec becomes SQL text; it panics on a name that ValidIdent refuses, because callers
// validate configs before planning SQL and a bad name here is a bug, never user input.
func QuoteIdent(name string) string {
	if err := ValidIdent(name); err != nil {
		panic(err)
	}
	return "`" + name + "`"
}

// QualifiedTable returns `database`.`table`.
func QualifiedTable(database, table string) string {
	return QuoteIdent(database) + "." + QuoteIdent(table)
}

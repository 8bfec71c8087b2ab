package ddl

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"customerloop.dev/customerloop/pipeline"
	"customerloop.dev/customerloop/pipeline/connect"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ApplySchema runs the planned statements in order. Each is idempotent. On a cluster, a
// statement that fails on some host is a DDLHostError naming the host; when every host
// that answered ran every statement but some hosts had not within the wait, the
// statements are all applied where they can be and the error is a DDLPendingError
// (errors.Is(err, ErrDDLPending)) naming those hosts: a warning, not a failure.
func ApplySchema(ctx context.Context, conn driver.Conn, stmts []pipeline.Statement) error {
	r := newRunner(conn)
	if err := r.run(ctx, stmts); err != nil {
		return err
	}
	return r.err()
}

// runner runs statements the way ApplySchema does, keeping what is pending across calls:
// after the first statement some hosts have not run within connect.DDLTimeout, the rest
// wait only connect.DDLPendingTimeout (those hosts are down; each statement would
// otherwise wait the whole timeout for them).
type runner struct {
	conn    driver.Conn
	timeout int
	pending *connect.DDLPendingError
}

func newRunner(conn driver.Conn) *runner { return &runner{conn: conn, timeout: connect.DDLTimeout} }

// run runs stmts in order and stops at the first that fails (a pending one does not).
func (r *runner) run(ctx context.Context, stmts []pipeline.Statement) error {
	for _, s := range stmts {
		hosts, err := connect.RunDDL(ctx, r.conn, s, r.timeout)
		if err != nil {
			return err
		}
		if len(hosts) > 0 {
			if r.pending == nil {
				r.pending = &connect.DDLPendingError{}
			}
			r.pending.Add(s.Object, hosts)
			r.timeout = connect.DDLPendingTimeout
		}
	}
	return nil
}

// err is the DDLPendingError of what ran, or nil.
func (r *runner) err() error {
	if r.pending == nil {
		return nil
	}
	return r.pending
}

// Object is one ClickHouse object (table or view) a loop declares, and how to bring it to
// its declared state. Apply compares it with what the servers hold; see there.
type Object struct {
	// Name is "database.name", as Statement.Object.
	Name string
	// Create makes the object as declared when it is missing (idempotent: IF NOT EXISTS).
	Create []pipeline.Statement
	// Fingerprint, when set, is text the declared definition carries (a view's
	// always-true predicate, a table's TTL clause): an existing object whose definition
	// lacks it is stale. Identifier quotes (`) are ignored in the comparison, since
	// servers quote differently across versions.
	Fingerprint string
	// Alter brings an existing object up to date in place. Without a Fingerprint it is
	// run whenever the object exists (a migration planned against what exists, such as
	// PlanMigration's added columns); with one, only when the object is stale (a TTL set
	// again). A stale object without Alter is replaced: Drop, then Create.
	Alter []pipeline.Statement
	// Drop removes the object: to replace it, or, with Absent, because it is no longer
	// declared.
	Drop []pipeline.Statement
	// Absent declares that the object must not exist: it is dropped when found.
	Absent bool
}

// Action is what Apply did, or had to do, to one object.
type Action string

const (
	Created   Action = "created"
	Replaced  Action = "replaced"
	Altered   Action = "altered"
	Unchanged Action = "unchanged"
	Dropped   Action = "dropped"
)

// Change is one object and what Apply did to it.
type Change struct {
	Object string
	Action Action
}

// step is a change and the statements that make it.
type step struct {
	Change
	stmts []pipeline.Statement
}

// definition is an existing table or view, as system.tables has it.
type definition struct{ engine, query string }

// found is what each server read holds, by "database.name": one map per server.
type found []map[string]definition

// Apply brings the declared objects to their declared state and reports, object by
// object in the order given, what it changed. It reads what exists once: system.tables
// of the objects' databases on conn, or, when nodes are given (ClusterNodes), on each of
// them. Then, without changing anything until every object is planned:
//
//   - an object missing on a server read is created (Create); one that exists on some
//     server with a stale definition and has no Alter is replaced (Drop, then Create);
//   - an existing object with Alter is altered when that applies (see Object.Alter);
//   - an Absent object found is dropped;
//   - everything else is left unchanged, and no DDL about it reaches the server (on a
//     cluster, nothing then waits in the DDL queue for a node that is down).
//
// Creations, replacements and drops run first, in the order given, then the alters:
// an alter may rely on the objects created before it. Statements run as in ApplySchema:
// a host's failure stops Apply with a DDLHostError (the changes made so far are
// returned); statements that some hosts have not run yet are a DDLPendingError
// (errors.Is(err, connect.ErrDDLPending)) returned with every change, a warning.
//
// Which servers to read is the caller's: the loop's tables are read on the connected
// node only (a node that missed an ON CLUSTER creation runs it from the DDL queue, and
// sending it again would make every reconcile wait for that node), the feedback views on
// every node (a read through a Distributed table reaches any replica).
func Apply(ctx context.Context, conn driver.Conn, nodes []driver.Conn, objs []Object) ([]Change, error) {
	servers := nodes
	if len(servers) == 0 {
		servers = []driver.Conn{conn}
	}
	var dbs []string
	for _, o := range objs {
		if db, _, _ := strings.Cut(o.Name, "."); !slices.Contains(dbs, db) {
			dbs = append(dbs, db)
		}
	}
	f, err := readFound(ctx, servers, dbs)
	if err != nil {
		return nil, err
	}
	return applyFound(ctx, conn, objs, f)
}

// applyFound is Apply against what the caller has already read.
func applyFound(ctx context.Context, conn driver.Conn, objs []Object, f found) ([]Change, error) {
	steps, err := diff(objs, f)
	if err != nil {
		return nil, err
	}
	r := newRunner(conn)
	done := make([]bool, len(steps))
	for _, i := range runOrder(steps) {
		if err := r.run(ctx, steps[i].stmts); err != nil {
			return changesDone(steps, done), err
		}
		done[i] = true
	}
	return changesDone(steps, done), r.err()
}

// runOrder is the order steps run in: creations, replacements and drops in the order
// given, then the alters. Unchanged objects have nothing to run.
func runOrder(steps []step) []int {
	var first, alters []int
	for i, s := range steps {
		switch s.Action {
		case Unchanged:
		case Altered:
			alters = append(alters, i)
		default:
			first = append(first, i)
		}
	}
	return append(first, alters...)
}

// changesDone lists the changes of the steps that ran, and the objects left unchanged.
func changesDone(steps []step, done []bool) []Change {
	var out []Change
	for i, s := range steps {
		if done[i] || s.Action == Unchanged {
			out = append(out, s.Change)
		}
	}
	return out
}

// diff plans each object against what the servers hold (see Apply). It is pure; an
// object it cannot bring to its state (missing without Create, stale without Alter or
// Drop) is an error, before anything runs.
func diff(objs []Object, f found) ([]step, error) {
	var steps []step
	for _, o := range objs {
		present, stale := 0, false
		for _, server := range f {
			d, ok := server[o.Name]
			if !ok {
				continue
			}
			present++
			if o.Fingerprint != "" && !strings.Contains(unquoted(d.query), unquoted(o.Fingerprint)) {
				stale = true
			}
		}
		missing := present < len(f)
		s := step{Change: Change{Object: o.Name, Action: Unchanged}}
		switch {
		case o.Absent:
			if present > 0 {
				s.Action, s.stmts = Dropped, o.Drop
			}
		case stale && len(o.Alter) == 0:
			if len(o.Drop) == 0 || len(o.Create) == 0 {
				return nil, fmt.Errorf("%s is not as declared and cannot be replaced", o.Name)
			}
			s.Action, s.stmts = Replaced, slices.Concat(o.Drop, o.Create)
		case missing:
			if len(o.Create) == 0 {
				return nil, fmt.Errorf("%s does not exist", o.Name)
			}
			s.Action, s.stmts = Created, o.Create
		case len(o.Alter) > 0 && (o.Fingerprint == "" || stale):
			s.Action, s.stmts = Altered, o.Alter
		}
		steps = append(steps, s)
	}
	return steps, nil
}

// unquoted drops identifier quotes, which servers add or leave out across versions.
func unquoted(s string) string { return strings.ReplaceAll(s, "`", "") }

// readFound reads the tables and views of dbs on each server.
func readFound(ctx context.Context, servers []driver.Conn, dbs []string) (found, error) {
	f := make(found, len(servers))
	for i, conn := range servers {
		f[i] = map[string]definition{}
		for _, db := range dbs {
			if err := readTables(ctx, conn, db, f[i]); err != nil {
				return nil, err
			}
		}
	}
	return f, nil
}

// readTables adds the tables and views of db on one server to into, by "db.name".
func readTables(ctx context.Context, conn driver.Conn, db string, into map[string]definition) error {
	rows, err := conn.Query(ctx, "SELECT name, engine, create_table_query FROM system.tables WHERE database = ?", db)
	if err != nil {
		return fmt.Errorf("reading the tables of %s: %w", db, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var d definition
		if err := rows.Scan(&name, &d.engine, &d.query); err != nil {
			return fmt.Errorf("reading the tables of %s: %w", db, err)
		}
		into[db+"."+name] = d
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the tables of %s: %w", db, err)
	}
	return nil
}

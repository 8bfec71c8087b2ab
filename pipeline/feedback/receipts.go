package feedback

import (
	"strconv"
	"time"
)

// Receipt is one of a customer's consent messages as the channel shows it to them: what
// they asked, and, once it was applied, what was deleted where.
type Receipt struct {
	// ID is the message's id, as the customer sent it.
	ID     string   `json:"id"`
	Action string   `json:"action"`
	Scope  []string `json:"scope"`
	// At is the message's own time; ReceivedAt when the loop read it.
	At         time.Time `json:"at"`
	ReceivedAt time.Time `json:"receivedAt"`
	// Error says why the message was not applied, when it was not.
	Error string `json:"error,omitempty"`
	// Applied is nil while the message waits to be applied.
	Applied *Applied `json:"applied"`
}

// Applied is what a consent message did: rows deleted per table (for a withdrawal),
// when everything was complete, and the audit's id (the message's place in the consent
// topic), which the vendor's records name too.
type Applied struct {
	AuditID     string        `json:"auditId"`
	CompletedAt time.Time     `json:"completedAt"`
	Deleted     []DeletedRows `json:"deleted"`
}

// DeletedRows is how many of the customer's rows a withdrawal deleted from a table.
type DeletedRows struct {
	Table string `json:"table"`
	Rows  uint64 `json:"rows"`
}

// Receipts turns a customer's consent trail into the receipts the channel shows them.
func Receipts(trail []ConsentRecord) []Receipt {
	out := make([]Receipt, 0, len(trail))
	for _, r := range trail {
		e := r.Event
		rc := Receipt{ID: e.ID, Action: e.Action, Scope: append([]string{}, e.Scope...), At: e.At.UTC(), ReceivedAt: e.Received.UTC(), Error: e.Err}
		if rc.Error == "" {
			rc.Error = r.AuditError
		}
		if a := r.Audit; a != nil {
			ap := &Applied{AuditID: e.Topic + "/" + strconv.Itoa(e.Partition) + "/" + strconv.FormatInt(e.Offset, 10),
				CompletedAt: a.CompletedAt.UTC(), Deleted: []DeletedRows{}}
			for i, t := range a.Tables {
				n := uint64(0)
				if i < len(a.RowsDeleted) {
					n = a.RowsDeleted[i]
				}
				ap.Deleted = append(ap.Deleted, DeletedRows{Table: t, Rows: n})
			}
			rc.Applied = ap
		}
		out = append(out, rc)
	}
	return out
}

package customer

import (
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of the limit on failed authentications per client.
const (
	// DefaultFailureRate is how many failed authentications per second a client may
	// sustain before it is refused outright.
	DefaultFailureRate = 1.0
	// DefaultFailureBurst is how many failed authentications a client may make at once.
	DefaultFailureBurst = 10
	// IdleEviction is how long a key's limiter is kept unused before it is forgotten (or
	// longer, the time its burst takes to refill, so that forgetting it gives nothing).
	IdleEviction = 10 * time.Minute
	// maxKeys bounds each set of limiters; past it new keys share one limiter.
	maxKeys = 1 << 16
	// overflowKey is the shared limiter of the keys past maxKeys; no token or client
	// key is spelled so.
	overflowKey = "\x00overflow"
	// sweepEvery is how often the idle limiters are looked for.
	sweepEvery = time.Minute
)

// Limiter limits the requests of each token, and the failed authentications of each
// client: a client past its failures is refused before its token is looked at, so that
// guessing tokens is slow and costs the server no hashing. Its memory is bounded: a
// limiter idle for IdleEviction is forgotten, and past 65536 keys in a set the new
// ones share a limiter. It is safe for concurrent use.
type Limiter struct {
	tokens  *buckets
	clients *buckets
}

// NewLimiter returns a Limiter that lets each token make rate requests per second in
// bursts of up to burst, and each client fail DefaultFailureRate times per second in
// bursts of DefaultFailureBurst (see LimitFailures). It panics when rate is not
// positive or burst is under 1: a limit that refuses everything is a programming error.
// Use one Limiter per loop: tokens are told apart by their id alone.
func NewLimiter(rate float64, burst int) *Limiter {
	return &Limiter{tokens: newBuckets(rate, burst), clients: newBuckets(DefaultFailureRate, DefaultFailureBurst)}
}

// LimitFailures sets how many failed authentications per second each client may
// sustain, in bursts of up to burst, and returns l. Call it before l is in use. It
// panics as NewLimiter does.
func (l *Limiter) LimitFailures(rate float64, burst int) *Limiter {
	l.clients = newBuckets(rate, burst)
	return l
}

// allowToken takes one request from the token's budget at now, or says how long until
// one is left.
func (l *Limiter) allowToken(key string, now time.Time) (bool, time.Duration) {
	return l.tokens.take(key, now)
}

// clientMayTry reports whether the client has a failure left at now, without taking it,
// or how long until it has one.
func (l *Limiter) clientMayTry(client string, now time.Time) (bool, time.Duration) {
	return l.clients.peek(client, now)
}

// clientFailed takes one failure from the client's budget.
func (l *Limiter) clientFailed(client string, now time.Time) {
	l.clients.take(client, now)
}

// buckets is a set of token buckets by key.
type buckets struct {
	limit     rate.Limit
	burst     int
	idle      time.Duration
	mu        sync.Mutex
	m         map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

func newBuckets(perSecond float64, burst int) *buckets {
	if !(perSecond > 0) || burst < 1 {
		panic(fmt.Sprintf("customer: rate limit %v per second in bursts of %d refuses everything", perSecond, burst))
	}
	idle := IdleEviction
	if refill := time.Duration(float64(burst) / perSecond * float64(time.Second)); refill > idle && perSecond < math.Inf(1) {
		idle = refill
	}
	limit := rate.Limit(perSecond)
	if math.IsInf(perSecond, 1) {
		limit = rate.Inf
	}
	return &buckets{limit: limit, burst: burst, idle: idle, m: map[string]*bucket{}}
}

// take takes one token of key's bucket at now, or says how long until one is there.
func (b *buckets) take(key string, now time.Time) (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bk := b.get(key, now, true)
	if bk.lim.AllowN(now, 1) {
		return true, 0
	}
	return false, b.wait(bk.lim.TokensAt(now))
}

// peek says whether key's bucket has a token at now, without taking it. An unknown key
// has a full bucket and is not remembered.
func (b *buckets) peek(key string, now time.Time) (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bk := b.get(key, now, false)
	if bk == nil {
		return true, 0
	}
	if t := bk.lim.TokensAt(now); t < 1 {
		return false, b.wait(t)
	}
	return true, 0
}

// wait is how long until a bucket holding tokens has one.
func (b *buckets) wait(tokens float64) time.Duration {
	return time.Duration((1 - tokens) / float64(b.limit) * float64(time.Second))
}

// get returns key's bucket, made when create is set, and forgets idle ones once in a
// while. b.mu is held.
func (b *buckets) get(key string, now time.Time, create bool) *bucket {
	if now.Sub(b.lastSweep) >= sweepEvery || now.Before(b.lastSweep) {
		b.sweep(now)
	}
	bk, ok := b.m[key]
	if !ok && len(b.m) >= maxKeys {
		b.sweep(now)
		if len(b.m) >= maxKeys {
			key = overflowKey
			bk, ok = b.m[key]
		}
	}
	if !ok {
		if !create {
			return nil
		}
		bk = &bucket{lim: rate.NewLimiter(b.limit, b.burst)}
		b.m[key] = bk
	}
	if now.After(bk.last) {
		bk.last = now
	}
	return bk
}

func (b *buckets) sweep(now time.Time) {
	b.lastSweep = now
	for k, bk := range b.m {
		if now.Sub(bk.last) >= b.idle {
			delete(b.m, k)
		}
	}
}

// len returns how many keys are remembered.
func (b *buckets) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}

package tokenizer

import (
	"container/heap"
	"hash/maphash"
	"math"
	"strings"
	"sync"
)

// merge is one entry of the merges list: the pair it applies to becomes token id; lower rank first.
type merge struct {
	rank int32
	id   int32
}

// bpe is a byte-level BPE model: token ids for the 256 single bytes and the ranked merges.
type bpe struct {
	byteID [256]int32
	merges map[uint64]merge // key: pairKey(left, right)
	// vocab maps a token's bytes to its id; used only when ignoreMerges is set.
	vocab        map[string]int32
	ignoreMerges bool
	cache        *bpeCache
}

func pairKey(left, right int32) uint64 { return uint64(uint32(left))<<32 | uint64(uint32(right)) }

// quadraticMax is the piece length up to which the simple O(n²) merge loop is used; longer pieces
// use a heap. Both give identical results (tested).
const quadraticMax = 48

// maxCachedPiece is the longest piece (in bytes) whose encoding is cached.
const maxCachedPiece = 128

// appendEncode appends the ids of one pre-tokenized piece (raw bytes) to dst.
func (m *bpe) appendEncode(dst []int, piece string) []int {
	if len(piece) == 1 {
		return append(dst, int(m.byteID[piece[0]]))
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[piece]; ok {
			return append(dst, int(id))
		}
	}
	cacheable := m.cache != nil && len(piece) <= maxCachedPiece
	if cacheable {
		if ids, ok := m.cache.get(piece); ok {
			for _, id := range ids {
				dst = append(dst, int(id))
			}
			return dst
		}
	}
	var ids []int32
	if len(piece) <= quadraticMax {
		var buf [quadraticMax]int32
		ids = m.mergeQuadratic(buf[:0], piece)
	} else {
		ids = m.mergeHeap(piece)
	}
	if cacheable {
		m.cache.put(piece, append([]int32(nil), ids...))
	}
	for _, id := range ids {
		dst = append(dst, int(id))
	}
	return dst
}

// mergeQuadratic runs BPE on piece keeping the merge of each adjacent pair in an array: each step
// applies the leftmost pair of lowest rank and looks up only the two new neighbouring pairs.
func (m *bpe) mergeQuadratic(ids []int32, piece string) []int32 {
	for i := 0; i < len(piece); i++ {
		ids = append(ids, m.byteID[piece[i]])
	}
	var buf [quadraticMax]merge
	pairs := buf[:len(ids)-1]
	mergeOf := func(a, b int32) merge {
		if mg, ok := m.merges[pairKey(a, b)]; ok {
			return mg
		}
		return merge{rank: math.MaxInt32}
	}
	for k := range pairs {
		pairs[k] = mergeOf(ids[k], ids[k+1])
	}
	for len(ids) > 1 {
		best, bestRank := -1, int32(math.MaxInt32)
		for k, p := range pairs {
			if p.rank < bestRank {
				best, bestRank = k, p.rank
			}
		}
		if best < 0 {
			break
		}
		ids[best] = pairs[best].id
		ids = append(ids[:best+1], ids[best+2:]...)
		pairs = append(pairs[:best], pairs[best+1:]...)
		if best > 0 {
			pairs[best-1] = mergeOf(ids[best-1], ids[best])
		}
		if best < len(pairs) {
			pairs[best] = mergeOf(ids[best], ids[best+1])
		}
	}
	return ids
}

// candidate is a possible merge of the symbol at pos with its right neighbour.
type candidate struct {
	rank, pos   int32
	left, right int32 // the two ids when the candidate was pushed
}

type candidateHeap []candidate

func (h candidateHeap) Len() int { return len(h) }
func (h candidateHeap) Less(i, j int) bool {
	return h[i].rank < h[j].rank || (h[i].rank == h[j].rank && h[i].pos < h[j].pos)
}
func (h candidateHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *candidateHeap) Push(x any)   { *h = append(*h, x.(candidate)) }
func (h *candidateHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// mergeHeap runs BPE on a long piece in O(n log n): symbols form a linked list, candidate merges
// sit in a heap ordered by (rank, position), and stale candidates are skipped when popped.
func (m *bpe) mergeHeap(piece string) []int32 {
	n := len(piece)
	ids := make([]int32, n)
	next := make([]int32, n)
	prev := make([]int32, n)
	for i := 0; i < n; i++ {
		ids[i] = m.byteID[piece[i]]
		next[i] = int32(i + 1)
		prev[i] = int32(i - 1)
	}
	next[n-1] = -1
	h := make(candidateHeap, 0, n)
	push := func(pos int32) {
		nx := next[pos]
		if nx < 0 {
			return
		}
		if mg, ok := m.merges[pairKey(ids[pos], ids[nx])]; ok {
			heap.Push(&h, candidate{rank: mg.rank, pos: pos, left: ids[pos], right: ids[nx]})
		}
	}
	for i := 0; i < n-1; i++ {
		push(int32(i))
	}
	dead := make([]bool, n)
	for h.Len() > 0 {
		c := heap.Pop(&h).(candidate)
		nx := next[c.pos]
		if dead[c.pos] || nx < 0 || ids[c.pos] != c.left || ids[nx] != c.right {
			continue
		}
		ids[c.pos] = m.merges[pairKey(c.left, c.right)].id
		dead[nx] = true
		next[c.pos] = next[nx]
		if next[nx] >= 0 {
			prev[next[nx]] = c.pos
		}
		if p := prev[c.pos]; p >= 0 {
			push(p)
		}
		push(c.pos)
	}
	out := make([]int32, 0, n)
	for i := int32(0); i >= 0; i = next[i] {
		out = append(out, ids[i])
	}
	return out
}

// bpeCache maps pieces to their ids; safe for concurrent use. It is split into shards, each with
// its own lock, and a shard is emptied when it reaches its capacity.
type bpeCache struct {
	seed   maphash.Seed
	shards [cacheShards]cacheShard
}

const (
	cacheShards   = 64
	cacheShardCap = 4096
)

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]int32
}

func newBPECache() *bpeCache {
	c := &bpeCache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[string][]int32)
	}
	return c
}

func (c *bpeCache) shard(piece string) *cacheShard {
	return &c.shards[maphash.String(c.seed, piece)%cacheShards]
}

func (c *bpeCache) get(piece string) ([]int32, bool) {
	s := c.shard(piece)
	s.mu.RLock()
	ids, ok := s.m[piece]
	s.mu.RUnlock()
	return ids, ok
}

func (c *bpeCache) put(piece string, ids []int32) {
	s := c.shard(piece)
	s.mu.Lock()
	if len(s.m) >= cacheShardCap {
		clear(s.m)
	}
	s.m[strings.Clone(piece)] = ids // the piece may share memory with a large document
	s.mu.Unlock()
}

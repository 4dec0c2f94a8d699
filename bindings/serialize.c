/*
** serialize.c: the codec, `require "host.serialize"` (floor 1). It owns the
** wire format below, the encoder and the decoder, and each universe's table
** of registered types (the registry field "host.serialize.types").
**
** Both directions walk the value graph with an explicit stack of frames in
** C memory, never with C recursion, so nesting depth is limited only by
** memory. All C memory in use (the output buffer, the frame stacks, the
** encoder's pointer maps of objects seen) is owned by "box" userdata on the
** Lua stack: an error that longjmps out leaves it to the garbage collector,
** nothing leaks. No static mutable state.
**
** Wire format, version 1 (integers in counts are little-endian; a varint
** is unsigned LEB128, at most 10 bytes):
**
**   payload := 'H' 'S' version varint:count value*count
**   value   := NIL | FALSE | TRUE
**            | INT varint:zigzag          FLT 8 bytes IEEE-754
**            | STR varint:len bytes       MSTR varint:len bytes  (memo)
**            | REF varint:index           an earlier memoized object
**            | TBL u32:narr u32:nhash value*narr (key value)*nhash  (memo)
**            | MTBL varint:len name, then as TBL (metatable registered
**              under name)
**            | GLOB                       the receiver's globals table
**            | LFN u32:len bytecode upvalue*nups   (memo; nups from the
**              bytecode)  upvalue := value | JOIN varint:index u8:n
**            | CFN varint:len module varint:len field      (memo)
**            | UDATA varint:len type varint:len bytes      (memo)
**
** "memo" objects take the next index (from 1) when their tag is met, in
** both directions, so REF and JOIN can point back at them: that is how
** shared references, cycles and shared upvalues survive. JOIN n joins the
** upvalue to upvalue n of the function at that index. An upvalue named
** _ENV, whatever it holds, is written as GLOB.
*/
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serialize.h"

#define FORMAT_VERSION 1
#define TYPES_KEY "host.serialize.types"
#define CFUNCS_KEY "host.serialize.cfuncs"
#define DUMPS_KEY "host.serialize.dumps"    /* registry: closure -> its bytecode */
#define PROTOS_KEY "host.serialize.protos"  /* registry: bytecode -> its maker */
/* Bounds of those two caches (per universe): a function's bytecode is kept
** only up to FCACHE_MAX_BYTES, at most FCACHE_MAX_COUNT of them and
** FCACHE_MAX_TOTAL bytes in all; a cache that would pass a bound is
** dropped whole and starts again. */
#define FCACHE_MAX_BYTES (64 * 1024)
#define FCACHE_MAX_COUNT 128
#define FCACHE_MAX_TOTAL (1024 * 1024)
#define BOX_TYPE "host.serialize.box"
#define SCRATCH_TYPE "host.serialize.scratch"
#define SCRATCH_KEY "host.serialize.scratch"
#define MEMO_STRING_MIN 32  /* strings this long are memoized */
#define PATH_HEAD 8         /* path segments kept before a "..." */
#define PATH_TAIL 24        /* path segments kept after it */
#define KEY_SHOW_MAX 40     /* bytes of a string key shown in a path */

enum tag {
  T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_STR, T_MSTR, T_REF, T_TBL, T_MTBL,
  T_GLOB, T_LFN, T_CFN, T_UDATA, T_JOIN
};

/* Fields of an entry of the types table: {name, metatable, dump, load}. */
enum { TYPE_NAME = 1, TYPE_MT, TYPE_DUMP, TYPE_LOAD };

enum frame_kind { F_TABLE, F_FUNC };

/* ---- boxes: C memory owned by a userdata ---- */

typedef struct box {
  char *p;
  size_t len, cap;
} box;

/* Frees a box's memory, or hands it over when `keep` is not NULL. */
static void box_release(box *b, char **keep) {
  if (keep) *keep = b->p;
  else free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* __gc and __close of a box (idempotent). */
static int box_free(lua_State *L) {
  box_release(lua_touserdata(L, 1), NULL);
  return 0;
}

static const luaL_Reg box_meta[] = {
  {"__gc", box_free},
  {"__close", box_free},
  {NULL, NULL}
};

/* Pushes a new empty box. */
static box *box_push(lua_State *L) {
  box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->p = NULL;
  b->len = b->cap = 0;
  if (luaL_newmetatable(L, BOX_TYPE)) luaL_setfuncs(L, box_meta, 0);
  lua_setmetatable(L, -2);
  return b;
}

/* Makes room for `n` more bytes; false when memory is short. Never raises. */
static bool box_try_grow(box *b, size_t n) {
  size_t want = b->len + n;
  if (want < b->len) return false;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < want) cap = cap > SIZE_MAX / 2 ? want : cap * 2;
  char *p = realloc(b->p, cap);
  if (p == NULL) return false;
  b->p = p;
  b->cap = cap;
  return true;
}

/* Returns where `n` more bytes go, growing the box or raising. */
static inline char *box_room(lua_State *L, box *b, size_t n) {
  if (b->cap - b->len < n && !box_try_grow(b, n))
    luaL_error(L, "not enough memory");
  return b->p + b->len;
}

/*
** A scratch: the four boxes an encoding works in (the decoder uses
** `frames`), kept per universe in the registry (SCRATCH_KEY) between
** codings so that a small task's coding allocates nearly nothing: making
** four finalized userdata and a 1 KiB pointer map each time cost more
** than encoding a few values. A coding takes the scratch out of the
** registry (a nested coding, from a userdata's dump or load function,
** makes its own) and gives it back when done; one that raises leaves it
** to the garbage collector, whose __gc frees the boxes. Boxes over
** SCRATCH_KEEP bytes are freed, not kept.
*/
typedef struct scratch {
  box out, frames, seen, upvals;
} scratch;

#define SCRATCH_KEEP (64 * 1024)

/* __gc of a scratch. */
static int scratch_free(lua_State *L) {
  scratch *w = lua_touserdata(L, 1);
  box_release(&w->out, NULL);
  box_release(&w->frames, NULL);
  box_release(&w->seen, NULL);
  box_release(&w->upvals, NULL);
  return 0;
}

/* Pushes the universe's scratch (taken out of the registry) or a new one. */
static scratch *scratch_take(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, SCRATCH_KEY) == LUA_TUSERDATA) {
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, SCRATCH_KEY);
    return lua_touserdata(L, -1);
  }
  lua_pop(L, 1);
  scratch *w = lua_newuserdatauv(L, sizeof *w, 0);
  memset(w, 0, sizeof *w);
  if (luaL_newmetatable(L, SCRATCH_TYPE)) {
    lua_pushcfunction(L, scratch_free);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return w;
}

/* Empties box b for the next coding: keeps its memory unless it is big. */
static void scratch_reset(box *b, bool zero) {
  if (b->cap > SCRATCH_KEEP) box_release(b, NULL);
  else if (zero && b->len > 0) memset(b->p, 0, b->cap);
  b->len = 0;
}

/* Gives the scratch at idx back to the registry, emptied. */
static void scratch_give(lua_State *L, int idx, scratch *w) {
  scratch_reset(&w->out, false);
  scratch_reset(&w->frames, false);
  scratch_reset(&w->seen, true);   /* pointer maps: empty slots are zero */
  scratch_reset(&w->upvals, true);
  lua_pushvalue(L, idx);
  lua_setfield(L, LUA_REGISTRYINDEX, SCRATCH_KEY);
}

/* ---- walking: shared by the encoder and the decoder ---- */

/* Pushes a zeroed frame of `size` bytes on the frame stack in `frames`. */
static void *frame_push(lua_State *L, box *frames, size_t size) {
  void *f = box_room(L, frames, size);
  frames->len += size;
  memset(f, 0, size);
  return f;
}

/*
** Makes the container on top the one walked: it moves to slot `t`, and its
** current key, at t + 1, starts as nil. Everything above is dropped.
*/
static void walk_into(lua_State *L, int t) {
  lua_copy(L, -1, t);
  lua_settop(L, t);
  lua_pushnil(L);
}

/* Back to a parent: slot `t` gets objs[idx] again; the caller pushes a key. */
static void walk_back(lua_State *L, int t, int objs, lua_Integer idx) {
  lua_settop(L, t - 1);
  lua_rawgeti(L, objs, idx);
}

/*
** A pointer map in a box: open addressing, linear probing, keys are the
** addresses lua_topointer gives (never NULL), values never 0. The encoder's
** objects are anchored (in objs) while it runs, so addresses stay unique.
*/
typedef struct pslot {
  const void *key;
  lua_Integer val;
} pslot;

static inline size_t pmap_cap(const box *m) { return m->cap / sizeof(pslot); }

static inline size_t pmap_hash(const void *k, size_t cap) {
  return (size_t)(((uintptr_t)k >> 3) * (uintptr_t)0x9E3779B97F4A7C15u) & (cap - 1);
}

/* The value under `k`, or 0. */
static lua_Integer pmap_get(const box *m, const void *k) {
  size_t cap = pmap_cap(m);
  if (cap == 0) return 0;
  const pslot *s = (const pslot *)(void *)m->p;
  for (size_t i = pmap_hash(k, cap);; i = (i + 1) & (cap - 1)) {
    if (s[i].key == k) return s[i].val;
    if (s[i].key == NULL) return 0;
  }
}

/* Stores `k` (not yet there) -> `v`; grows the map at half full. */
static void pmap_put(lua_State *L, box *m, const void *k, lua_Integer v) {
  size_t cap = pmap_cap(m);
  if (2 * (m->len + 1) > cap) {  /* m->len counts the keys */
    size_t ncap = cap ? 2 * cap : 64;
    pslot *ns = calloc(ncap, sizeof *ns);
    if (ns == NULL) luaL_error(L, "not enough memory");
    const pslot *os = (const pslot *)(void *)m->p;
    for (size_t j = 0; j < cap; j++) {
      if (os[j].key == NULL) continue;
      size_t i = pmap_hash(os[j].key, ncap);
      while (ns[i].key != NULL) i = (i + 1) & (ncap - 1);
      ns[i] = os[j];
    }
    free(m->p);
    m->p = (char *)ns;
    m->cap = ncap * sizeof *ns;
    cap = ncap;
  }
  pslot *s = (pslot *)(void *)m->p;
  size_t i = pmap_hash(k, cap);
  while (s[i].key != NULL) i = (i + 1) & (cap - 1);
  s[i].key = k;
  s[i].val = v;
  m->len++;
}

/* ---- the types table ---- */

/*
** Records `name` <-> the metatable at `mt` in the types table at `types`,
** with the userdata functions when given. Registering the same pair again
** is allowed; a name or a metatable already taken by another is an error.
*/
static void add_type(lua_State *L, int types, const char *name, int mt,
                     lua_CFunction dump, lua_CFunction load) {
  types = lua_absindex(L, types);
  mt = lua_absindex(L, mt);
  if (lua_getfield(L, types, name) == LUA_TTABLE) {
    lua_rawgeti(L, -1, TYPE_MT);
    bool same = lua_rawequal(L, -1, mt);
    lua_pop(L, 2);
    if (!same) luaL_error(L, "serialize: type name '%s' is already registered", name);
  } else {
    lua_pop(L, 1);
    lua_pushvalue(L, mt);
    if (lua_rawget(L, types) == LUA_TTABLE) {
      lua_rawgeti(L, -1, TYPE_NAME);
      luaL_error(L, "serialize: metatable is already registered as '%s'",
                 lua_tostring(L, -1));
    }
    lua_pop(L, 1);
  }
  lua_createtable(L, 4, 0);
  lua_pushstring(L, name);
  lua_rawseti(L, -2, TYPE_NAME);
  lua_pushvalue(L, mt);
  lua_rawseti(L, -2, TYPE_MT);
  if (dump != NULL) {
    lua_pushcfunction(L, dump);
    lua_rawseti(L, -2, TYPE_DUMP);
    lua_pushcfunction(L, load);
    lua_rawseti(L, -2, TYPE_LOAD);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, types, name);
  lua_pushvalue(L, mt);
  lua_insert(L, -2);
  lua_rawset(L, types);
}

/*
** Pushes the universe's types table, creating it on first use with
** host.Error's metatable registered, so error objects can cross.
*/
static void push_types(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, TYPES_KEY) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, TYPES_KEY);
  host_error_push(L, "", "", 0);  /* the public way to its metatable */
  lua_getmetatable(L, -1);
  add_type(L, -3, HOST_ERROR_TYPE, -1, NULL, NULL);
  lua_pop(L, 2);
}

/* ---- the encoder ---- */

typedef struct eframe {
  enum frame_kind kind;
  bool value_next;   /* tables: the key was a container, its value is next */
  bool in_hash;      /* tables: the run of keys 1, 2, 3... has ended */
  int up, nups;      /* functions: the upvalue being encoded, and how many */
  lua_Integer idx;   /* the container's memo index (objs[idx]) */
  uint64_t narr, nhash;
  size_t at;         /* tables: where the two u32 counts go in the output */
} eframe;

/*
** The encoder's Lua stack, from `base`: the boxes (output, frames, seen,
** upvals), objs (memo index -> object: anchors what seen points at, and
** finds a parent frame's container again), keys (frame -> the key it
** descended from), cfuncs (C function -> {module, field}), types, the
** globals table; then T, the container being walked, and its key at T + 1.
*/
typedef struct encoder {
  lua_State *L;
  box *out, *frames;
  box *seen;           /* pointer map: object -> memo index */
  box *upvals;         /* pointer map: upvalue id -> index * 256 + n */
  size_t depth;
  int arg;             /* which top-level value is being encoded */
  int *where;          /* NULL, or where an unserializable value's position goes:
                          its path then starts inside that value */
  lua_Integer nobjs;
  int objs, keys, cfuncs, types, globals, t;
  bool cfuncs_built;   /* cfuncs was built by this encoding */
} encoder;

static inline eframe *eframe_at(encoder *E, size_t d) {
  return (eframe *)(void *)E->frames->p + d;
}

static inline void put_byte(encoder *E, int c) {
  *box_room(E->L, E->out, 1) = (char)c;
  E->out->len++;
}


static inline void put_varint(encoder *E, uint64_t v) {
  unsigned char *p = (unsigned char *)box_room(E->L, E->out, 10);
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (unsigned char)v;
  E->out->len += n;
}

static inline void put_raw(encoder *E, const void *s, size_t n) {
  memcpy(box_room(E->L, E->out, n), s, n);
  E->out->len += n;
}

/* Writes a varint length and the bytes: strings, names, payloads. */
static inline void put_lstring(encoder *E, const char *s, size_t n) {
  box_room(E->L, E->out, n + 10);
  put_varint(E, n);
  put_raw(E, s, n);
}

static void put_u32_at(box *b, size_t at, uint64_t v) {
  for (int i = 0; i < 4; i++) b->p[at + (size_t)i] = (char)(v >> (8 * i));
}

/* Pushes the path segment of the key at index `k`: .name, ["a b"], [3]. */
static void push_key_segment(lua_State *L, int k) {
  switch (lua_type(L, k)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, k, &n);
      bool ident = n > 0 && n <= KEY_SHOW_MAX && !(s[0] >= '0' && s[0] <= '9');
      for (size_t i = 0; ident && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        ident = c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                (c >= '0' && c <= '9');
      }
      if (ident) {
        lua_pushfstring(L, ".%s", s);
        return;
      }
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      luaL_addstring(&b, "[\"");
      for (size_t i = 0; i < n && i < KEY_SHOW_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
          luaL_addchar(&b, '\\');
          luaL_addchar(&b, (char)c);
        } else if (c < 32 || c > 126) {
          char esc[8];
          snprintf(esc, sizeof esc, "\\%u", (unsigned)c);
          luaL_addstring(&b, esc);
        } else {
          luaL_addchar(&b, (char)c);
        }
      }
      if (n > KEY_SHOW_MAX) luaL_addstring(&b, "...");
      luaL_addstring(&b, "\"]");
      luaL_pushresult(&b);
      return;
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, k))
        lua_pushfstring(L, "[%I]", (LUAI_UACINT)lua_tointeger(L, k));
      else
        lua_pushfstring(L, "[%f]", (LUAI_UACNUMBER)lua_tonumber(L, k));
      return;
    case LUA_TBOOLEAN:
      lua_pushstring(L, lua_toboolean(L, k) ? "[true]" : "[false]");
      return;
    default:
      lua_pushfstring(L, "[<%s>]", luaL_typename(L, k));
      return;
  }
}

static void push_frame_key(encoder *E, size_t d);

/*
** Pushes frame d's path segment. The frame on top (`top`) has its key in
** slot T + 1; the others have theirs in keys[d + 1].
*/
static void push_frame_segment(encoder *E, size_t d, bool top, bool is_key) {
  lua_State *L = E->L;
  const eframe *f = eframe_at(E, d);
  if (f->kind == F_FUNC) {
    lua_rawgeti(L, E->objs, f->idx);
    const char *name = lua_getupvalue(L, -1, f->up);
    if (name == NULL) lua_pushnil(L);
    lua_pushfstring(L, "<upvalue %s>", name ? name : "?");
    lua_replace(L, -3);
    lua_pop(L, 1);
  } else if (top ? is_key : f->value_next) {
    lua_pushliteral(L, "<key>");
  } else {
    if (top) lua_pushvalue(L, E->t + 1);
    else push_frame_key(E, d);
    push_key_segment(L, lua_gettop(L));
    lua_remove(L, -2);
  }
}

/*
** Pushes the path of the value being encoded, e.g. `[2].out<upvalue t>[3]`,
** or with E->where the path inside its top-level value, `.out<upvalue
** t>[3]` (empty for that value itself); a long path keeps its first and
** last segments around a "...".
*/
static void push_path(encoder *E, bool is_key) {
  lua_State *L = E->L;
  luaL_checkstack(L, 16, "serialize");
  int n = 0;
  if (E->where == NULL) {
    lua_pushfstring(L, "[%d]", E->arg);
    n++;
  }
  for (size_t d = 0; d < E->depth; d++) {
    if (d == PATH_HEAD && E->depth > PATH_HEAD + PATH_TAIL) {
      lua_pushfstring(L, "...(%I more)...",
                      (LUAI_UACINT)(E->depth - PATH_HEAD - PATH_TAIL));
      d = E->depth - PATH_TAIL;
      n++;
    }
    push_frame_segment(E, d, d + 1 == E->depth, is_key);
    if (++n >= 8) {
      lua_concat(L, n);
      n = 1;
    }
  }
  lua_concat(L, n);
}

/*
** Raises "cannot serialize <type> at <path> (<detail>)", without "at
** <path>" for a top-level value named by the caller (see E->where).
*/
static int fail(encoder *E, bool is_key, const char *type, const char *detail) {
  push_path(E, is_key);
  const char *path = lua_tostring(E->L, -1);
  if (E->where != NULL) *E->where = E->arg;
  if (*path == '\0') return luaL_error(E->L, "cannot serialize %s (%s)", type, detail);
  return luaL_error(E->L, "cannot serialize %s at %s (%s)", type, path, detail);
}

/* The memo key of the value on top: `ptr`, or its address. */
static inline const void *memo_key(lua_State *L, const void *ptr) {
  return ptr ? ptr : lua_topointer(L, -1);
}

/* Writes a REF and returns true when the value on top was met before. */
static bool put_ref(encoder *E, const void *ptr) {
  lua_Integer idx = pmap_get(E->seen, memo_key(E->L, ptr));
  if (idx == 0) return false;
  put_byte(E, T_REF);
  put_varint(E, (uint64_t)idx);
  return true;
}

/* Gives the value on top the next memo index (objs also anchors it). */
static void memo_add(encoder *E, const void *ptr) {
  lua_State *L = E->L;
  lua_Integer idx = ++E->nobjs;
  pmap_put(L, E->seen, memo_key(L, ptr), idx);
  lua_pushvalue(L, -1);
  lua_rawseti(L, E->objs, idx);
}

/* Pushes a frame of `kind` for the container memoized last. */
static eframe *push_eframe(encoder *E, enum frame_kind kind) {
  eframe *f = frame_push(E->L, E->frames, sizeof *f);
  E->depth++;
  f->kind = kind;
  f->idx = E->nobjs;
  return f;
}

/* Makes sure the lazily created table in `slot` exists. */
static void need_table(lua_State *L, int slot) {
  if (lua_isnil(L, slot)) {
    lua_newtable(L);
    lua_replace(L, slot);
  }
}

/*
** Pushes the types entry for the metatable of the value on top, or nil when
** it has none registered; returns false when the value has no metatable.
*/
static bool push_type_of(encoder *E) {
  lua_State *L = E->L;
  if (!lua_getmetatable(L, -1)) return false;
  if (lua_isnil(L, E->types)) {
    push_types(L);
    lua_replace(L, E->types);
  }
  lua_rawget(L, E->types);
  return true;
}

/* The __name of the value at `idx`'s metatable, or `otherwise`. */
static const char *type_name(lua_State *L, int idx, const char *otherwise) {
  if (luaL_getmetafield(L, idx, "__name") == LUA_TNIL) return otherwise;
  if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
  lua_pop(L, 1);
  return otherwise;
}

/* Table on top: GLOB, a REF, or a header and a new frame (returns true). */
static bool put_table(encoder *E, bool is_key) {
  lua_State *L = E->L;
  if (lua_rawequal(L, -1, E->globals)) {
    put_byte(E, T_GLOB);
    return false;
  }
  int v = lua_gettop(L);
  if (put_ref(E, NULL)) return false;
  if (push_type_of(E)) {  /* the table has a metatable: it must be registered */
    if (!lua_istable(L, -1) || lua_rawgeti(L, -1, TYPE_DUMP) != LUA_TNIL) {
      const char *name = type_name(L, v, NULL);
      return fail(E, is_key, "table", name
                  ? lua_pushfstring(L, "unregistered metatable %s", name)
                  : "unregistered metatable");
    }
    lua_rawgeti(L, -2, TYPE_NAME);
    size_t n;
    const char *name = lua_tolstring(L, -1, &n);
    put_byte(E, T_MTBL);
    put_lstring(E, name, n);
    lua_pop(L, 3);
  } else {
    put_byte(E, T_TBL);
  }
  memo_add(E, NULL);
  eframe *f = push_eframe(E, F_TABLE);
  f->at = E->out->len;
  box_room(L, E->out, 8);
  E->out->len += 8;
  return true;
}

/* lua_dump's writer: appends to the output box; never raises. */
static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  box *b = ud;
  if (b->cap - b->len < n && !box_try_grow(b, n)) return 1;
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

/*
** Builds cfuncs: every C function found as package.loaded[module][field],
** mapped to {module, field}, and keeps it in the registry (CFUNCS_KEY,
** weak keys) for the next encodings of this universe: walking every
** loaded module costs ~80 us, more than a whole task. An entry is used
** only while package.loaded still holds the function there (see
** put_cfunction); a function not found, or found moved, makes an encoding
** build it again, once.
*/
static void build_cfuncs(encoder *E) {
  lua_State *L = E->L;
  lua_newtable(L);
  host_set_weak(L, "k");
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) {  /* cfuncs loaded module mod */
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {  /* cfuncs loaded module mod field f */
        if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
          lua_pushvalue(L, -1);
          if (lua_rawget(L, -7) == LUA_TNIL) {
            lua_createtable(L, 2, 0);  /* ... module mod field f nil entry */
            lua_pushvalue(L, -6);
            lua_rawseti(L, -2, 1);
            lua_pushvalue(L, -4);
            lua_rawseti(L, -2, 2);
            lua_pushvalue(L, -3);
            lua_insert(L, -2);
            lua_rawset(L, -9);
          }
          lua_pop(L, 1);
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, CFUNCS_KEY);
  lua_replace(L, E->cfuncs);
  E->cfuncs_built = true;
}

/*
** True when the cfuncs entry on top, {module, field}, still names the C
** function just below it in package.loaded.
*/
static bool cfunc_entry_valid(lua_State *L) {
  if (!lua_istable(L, -1)) return false;
  bool valid = false;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_rawgeti(L, -2, 1);
  if (lua_rawget(L, -2) == LUA_TTABLE) {
    lua_rawgeti(L, -3, 2);
    lua_rawget(L, -2);
    valid = lua_rawequal(L, -1, -5);
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return valid;
}

/*
** Pushes the cfuncs entry {module, field} of the C function on top, or
** nil: from the universe's kept map while its entry is still true, else
** from a map built again (once per encoding).
*/
static void push_cfunc_entry(encoder *E) {
  lua_State *L = E->L;
  if (lua_isnil(L, E->cfuncs)) {
    if (lua_getfield(L, LUA_REGISTRYINDEX, CFUNCS_KEY) == LUA_TTABLE) lua_replace(L, E->cfuncs);
    else {
      lua_pop(L, 1);
      build_cfuncs(E);
    }
  }
  lua_pushvalue(L, -1);
  lua_rawget(L, E->cfuncs);
  if (cfunc_entry_valid(L) || E->cfuncs_built) return;
  lua_pop(L, 1);
  build_cfuncs(E);
  lua_pushvalue(L, -1);
  lua_rawget(L, E->cfuncs);
}

/* C function on top: CFN with its module path, or an error. */
static void put_cfunction(encoder *E, bool is_key) {
  lua_State *L = E->L;
  push_cfunc_entry(E);
  if (!lua_istable(L, -1))
    fail(E, is_key, "function", "C function not found in package.loaded");
  size_t n;
  put_byte(E, T_CFN);
  for (int i = 1; i <= 2; i++) {
    lua_rawgeti(L, -1, i);
    const char *s = lua_tolstring(L, -1, &n);
    put_lstring(E, s, n);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  memo_add(E, NULL);
}

/*
** Pushes the cache table kept in the registry under `key` (a new one, with
** `mode` as its __mode when not nil, when there is none or it holds
** FCACHE_MAX_COUNT entries or FCACHE_MAX_TOTAL bytes: fields [1] and [2]
** count them; `adding` more are about to come).
*/
static void push_fcache(lua_State *L, const char *key, const char *mode, size_t adding) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, key) == LUA_TTABLE) {
    if (adding == 0) return;
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_Integer count = lua_tointeger(L, -2), total = lua_tointeger(L, -1);
    lua_pop(L, 2);
    if (count < FCACHE_MAX_COUNT && (size_t)total + adding <= FCACHE_MAX_TOTAL)
      return;
  }
  lua_pop(L, 1);
  if (adding == 0) {
    lua_pushnil(L);
    return;
  }
  lua_createtable(L, 2, 8);
  lua_pushinteger(L, 0);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, 0);
  lua_rawseti(L, -2, 2);
  if (mode != NULL) host_set_weak(L, mode);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
}

/*
** Sets key -> value (the two values on top, popped) in the cache table
** below them, counting one more entry of `bytes` bytes; pops the table.
*/
static void fcache_add(lua_State *L, size_t bytes) {
  lua_rawset(L, -3);
  lua_rawgeti(L, -1, 1);
  lua_pushinteger(L, lua_tointeger(L, -1) + 1);
  lua_rawseti(L, -3, 1);
  lua_rawgeti(L, -2, 2);
  lua_pushinteger(L, lua_tointeger(L, -1) + (lua_Integer)bytes);
  lua_rawseti(L, -4, 2);
  lua_pop(L, 3);
}

/*
** Writes the bytecode of the Lua function on top from the universe's cache
** of dumps, if it is there (a closure's prototype never changes, so
** neither does its dump): lua_dump costs as much as the rest of a small
** task's encoding.
*/
static bool put_cached_dump(encoder *E) {
  lua_State *L = E->L;
  push_fcache(L, DUMPS_KEY, "k", 0);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return false;
  }
  lua_pushvalue(L, -2);
  bool hit = lua_rawget(L, -2) == LUA_TSTRING;
  if (hit) {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    put_raw(E, s, n);
  }
  lua_pop(L, 2);
  return hit;
}

/* Keeps the bytecode just dumped at `from` in the output, of the function on top. */
static void keep_dump(encoder *E, size_t from) {
  lua_State *L = E->L;
  size_t n = E->out->len - from;
  if (n > FCACHE_MAX_BYTES) return;
  push_fcache(L, DUMPS_KEY, "k", n);
  lua_pushvalue(L, -2);
  lua_pushlstring(L, E->out->p + from, n);
  fcache_add(L, n);
}

/* Function on top: a REF, a CFN, or LFN with its bytecode and a frame. */
static bool put_function(encoder *E, bool is_key) {
  lua_State *L = E->L;
  if (put_ref(E, NULL)) return false;
  if (lua_iscfunction(L, -1)) {
    put_cfunction(E, is_key);
    return false;
  }
  put_byte(E, T_LFN);
  size_t at = E->out->len;
  box_room(L, E->out, 4);
  E->out->len += 4;
  if (!put_cached_dump(E)) {
    if (lua_dump(L, dump_writer, E->out, 0) != 0) luaL_error(L, "not enough memory");
    keep_dump(E, at + 4);
  }
  size_t n = E->out->len - at - 4;
  if (n > UINT32_MAX) fail(E, is_key, "function", "bytecode over 4 GiB");
  put_u32_at(E->out, at, n);
  memo_add(E, NULL);
  lua_Debug ar;
  lua_pushvalue(L, -1);
  lua_getinfo(L, ">u", &ar);
  if (ar.nups == 0) return false;
  push_eframe(E, F_FUNC)->nups = ar.nups;
  return true;
}

/*
** Userdata on top: a REF, or UDATA with the bytes its registered dump
** function returns; anything else is an error naming its __name.
*/
static void put_userdata(encoder *E, bool is_key) {
  lua_State *L = E->L;
  int u = lua_gettop(L);
  if (put_ref(E, NULL)) return;
  if (!push_type_of(E) || !lua_istable(L, -1) ||
      lua_rawgeti(L, -1, TYPE_DUMP) != LUA_TFUNCTION)
    fail(E, is_key, "userdata", type_name(L, u, "unregistered userdata"));
  lua_pushvalue(L, -3);
  int status = lua_pcall(L, 1, 1, 0);
  if (status != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
    /* its error may be any value, its __tostring user code: run protected */
    const char *why = status != LUA_OK ? host_error_tostring(L) : "dump returned no string";
    lua_rawgeti(L, -2, TYPE_NAME);
    fail(E, is_key, "userdata",
         lua_pushfstring(L, "%s: %s", lua_tostring(L, -1), why));
  }
  size_t n;
  const char *s;
  put_byte(E, T_UDATA);
  lua_rawgeti(L, -2, TYPE_NAME);
  s = lua_tolstring(L, -1, &n);
  put_lstring(E, s, n);
  s = lua_tolstring(L, -2, &n);
  put_lstring(E, s, n);
  lua_pop(L, 3);
  memo_add(E, NULL);
}

/* A long string on top: a REF, or MSTR (memoized by its address). */
static void put_long_string(encoder *E) {
  size_t n;
  const char *s = lua_tolstring(E->L, -1, &n);
  if (put_ref(E, s)) return;
  memo_add(E, s);
  put_byte(E, T_MSTR);
  put_lstring(E, s, n);
}

/*
** Encodes the value at `idx`. Returns false when it is done (the stack is
** as it was), or true when it is a container met for the first time: its
** header is written, its frame pushed, and a copy of it is left on top for
** the caller to walk. Scalars and short strings never touch the stack.
*/
static bool put_value(encoder *E, int idx, bool is_key) {
  lua_State *L = E->L;
  if (lua_isinteger(L, idx)) {  /* first: the commonest in big arrays */
    uint64_t u = (uint64_t)lua_tointeger(L, idx);
    uint64_t z = (u << 1) ^ (0 - (u >> 63));
    unsigned char *p = (unsigned char *)box_room(L, E->out, 11);
    size_t n = 0;
    p[n++] = T_INT;
    while (z >= 0x80) {
      p[n++] = (unsigned char)(z | 0x80);
      z >>= 7;
    }
    p[n++] = (unsigned char)z;
    E->out->len += n;
    return false;
  }
  int type = lua_type(L, idx);
  switch (type) {
    case LUA_TNIL:
      put_byte(E, T_NIL);
      return false;
    case LUA_TBOOLEAN:
      put_byte(E, lua_toboolean(L, idx) ? T_TRUE : T_FALSE);
      return false;
    case LUA_TNUMBER: {  /* a float: integers were written above */
      double d = (double)lua_tonumber(L, idx);
      uint64_t u;
      unsigned char b[9] = {T_FLT};
      memcpy(&u, &d, sizeof u);
      for (int i = 0; i < 8; i++) b[i + 1] = (unsigned char)(u >> (8 * i));
      put_raw(E, b, sizeof b);
      return false;
    }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      if (n >= MEMO_STRING_MIN) break;
      box_room(L, E->out, n + 11);
      put_byte(E, T_STR);
      put_lstring(E, s, n);
      return false;
    }
    case LUA_TLIGHTUSERDATA:
      lua_pushvalue(L, idx);
      fail(E, is_key, "userdata", "light userdata");
      return false;
    case LUA_TTHREAD:
      lua_pushvalue(L, idx);
      fail(E, is_key, "thread", "coroutine");
      return false;
    default:
      break;
  }
  lua_pushvalue(L, idx);  /* the kinds below work on a copy on top */
  bool deeper = false;
  switch (type) {
    case LUA_TSTRING: put_long_string(E); break;
    case LUA_TTABLE: deeper = put_table(E, is_key); break;
    case LUA_TFUNCTION: deeper = put_function(E, is_key); break;
    default: put_userdata(E, is_key); break;
  }
  if (!deeper) lua_pop(L, 1);
  return deeper;
}

/* The key a table frame was at when it descended: in keys, or narr. */
static void push_frame_key(encoder *E, size_t d) {
  const eframe *f = eframe_at(E, d);
  if (f->in_hash) lua_rawgeti(E->L, E->keys, (lua_Integer)d + 1);
  else lua_pushinteger(E->L, (lua_Integer)f->narr);
}

/*
** Makes the container on top (its frame just pushed) the one being walked:
** a parent table in its hash section keeps its current key in keys (in the
** array section the key is its count); then T = the container.
*/
static void edescend(encoder *E) {
  lua_State *L = E->L;
  if (E->depth >= 2) {
    const eframe *parent = eframe_at(E, E->depth - 2);
    if (parent->kind == F_TABLE && parent->in_hash) {
      need_table(L, E->keys);
      lua_pushvalue(L, E->t + 1);
      lua_rawseti(L, E->keys, (lua_Integer)E->depth - 1);
    }
  }
  walk_into(L, E->t);
}

/* Ends the frame on top; the parent becomes the one walked again. */
static void eascend(encoder *E) {
  lua_State *L = E->L;
  E->depth--;
  E->frames->len -= sizeof(eframe);
  if (E->depth == 0) return;
  const eframe *f = eframe_at(E, E->depth - 1);
  walk_back(L, E->t, E->objs, f->idx);
  if (f->kind == F_TABLE) push_frame_key(E, E->depth - 1);
  else lua_pushnil(L);
}

/* Writes the two counts of a table frame, now that they are known. */
static void end_table(encoder *E, eframe *f) {
  if (f->narr > UINT32_MAX || f->nhash > UINT32_MAX)
    luaL_error(E->L, "cannot serialize a table with 2^32 entries or more");
  put_u32_at(E->out, f->at, f->narr);
  put_u32_at(E->out, f->at + 4, f->nhash);
}

/*
** Upvalue i of the function in T: when the same upvalue was met before,
** writes JOIN to it and returns true; else records where it lives.
*/
static bool put_join(encoder *E, const eframe *f, int i) {
  void *id = lua_upvalueid(E->L, E->t, i);
  lua_Integer at = pmap_get(E->upvals, id);
  if (at != 0) {
    put_byte(E, T_JOIN);
    put_varint(E, (uint64_t)(at >> 8));
    put_byte(E, (int)(at & 0xff));
    return true;
  }
  pmap_put(E->L, E->upvals, id, f->idx * 256 + i);
  return false;
}

/* Is the key at `k` the integer n + 1? (Not the string "1": no coercion.) */
static inline bool is_next_index(lua_State *L, int k, uint64_t n) {
  return lua_isinteger(L, k) && (uint64_t)lua_tointeger(L, k) == n + 1;
}

/*
** Walks the container on top and everything below it, frame by frame, until
** the frame stack is empty again. Table frames walk with lua_next: first the
** run of keys 1, 2, 3... (the array section), then every other pair. The
** stack is T, K (the current key) and, after lua_next, the value at T + 2.
*/
static void encode_graph(encoder *E) {
  lua_State *L = E->L;
  int t = E->t;
  edescend(E);
  while (E->depth > 0) {
    size_t d = E->depth - 1;
    eframe *f = eframe_at(E, d);
    if (f->kind == F_FUNC) {
      if (f->up == f->nups) {
        eascend(E);
        continue;
      }
      int i = ++f->up;
      if (put_join(E, f, i)) continue;
      const char *name = lua_getupvalue(L, t, i);
      if (name != NULL && strcmp(name, "_ENV") == 0) {  /* whatever it holds */
        put_byte(E, T_GLOB);
        lua_settop(L, t + 1);
        continue;
      }
    } else if (f->value_next) {  /* back from a key that was a container */
      f->value_next = false;
      lua_pushvalue(L, t + 1);
      lua_rawget(L, t);
    } else if (!lua_next(L, t)) {
      end_table(E, f);
      eascend(E);
      continue;
    } else if (!f->in_hash && is_next_index(L, t + 1, f->narr)) {
      f->narr++;
    } else {
      f->in_hash = true;
      f->nhash++;
      if (put_value(E, t + 1, true)) {
        eframe_at(E, d)->value_next = true;
        edescend(E);
        continue;
      }
    }
    if (put_value(E, t + 2, false)) edescend(E);
    else lua_settop(L, t + 1);
  }
}

/*
** Encodes the `n` values from stack index `first` and pushes the scratch
** whose `out` box holds the payload (see scratch_give). Everything else it
** pushed is gone again. `where`: see encoder.
*/
static scratch *encode_values(lua_State *L, int first, int n, int *where) {
  encoder E = {.L = L, .where = where};
  luaL_checkstack(L, 48, "serialize");  /* 9 slots, the walk, cfuncs' build */
  int base = lua_gettop(L);
  scratch *w = scratch_take(L);
  E.out = &w->out;
  E.frames = &w->frames;
  E.seen = &w->seen;
  E.upvals = &w->upvals;
  lua_newtable(L);
  E.objs = lua_gettop(L);
  lua_pushnil(L);
  E.keys = lua_gettop(L);
  lua_pushnil(L);
  E.cfuncs = lua_gettop(L);
  lua_pushnil(L);
  E.types = lua_gettop(L);
  lua_pushglobaltable(L);
  E.globals = lua_gettop(L);
  E.t = E.globals + 1;
  put_raw(&E, "HS", 2);
  put_byte(&E, FORMAT_VERSION);
  put_varint(&E, (uint64_t)n);
  for (int i = 0; i < n; i++) {
    E.arg = i + 1;
    if (put_value(&E, first + i, false)) encode_graph(&E);
    lua_settop(L, E.t - 1);
  }
  lua_settop(L, base + 1);
  return w;
}

/* ---- the decoder ---- */

typedef struct dframe {
  enum frame_kind kind;
  bool value_next;   /* tables: the key is in slot K, its value is next */
  int up, nups;      /* functions: the upvalue being decoded, and how many */
  lua_Integer idx;   /* the container's memo index */
  lua_Integer keyidx;  /* tables: memo index of a key that was a container */
  uint64_t narr, nhash, i, j;  /* tables: counts, and how many are read */
} dframe;

/*
** The decoder's Lua stack: the frame box, objs (memo index -> object),
** types (made when needed), then T, the container being filled, and at
** T + 1 the key whose value comes next.
*/
typedef struct decoder {
  lua_State *L;
  const unsigned char *start, *p, *end;
  box *frames;
  size_t depth;
  size_t pending;    /* values promised by the counts read so far */
  lua_Integer nobjs;
  bool functions;    /* functions and the globals table may be loaded */
  int objs, types, t;
} decoder;

static inline dframe *dframe_at(decoder *D, size_t d) {
  return (dframe *)(void *)D->frames->p + d;
}

/* Raises "corrupt serialized data at byte N: <why>". */
static int corrupt(decoder *D, const char *why) {
  return luaL_error(D->L, "corrupt serialized data at byte %I: %s",
                    (LUAI_UACINT)(D->p - D->start), why);
}

/*
** Raises Lua's own memory error (LUA_ERRMEM, "not enough memory": lua_error
** keeps that message one), so that memory that runs out is never reported
** as bad input. The message is preallocated: pushing it allocates nothing.
*/
static int memory_error(lua_State *L) {
  lua_pushliteral(L, "not enough memory");
  return lua_error(L);
}

/* Fails unless `n` more bytes are there. */
static inline void need(decoder *D, size_t n) {
  if ((size_t)(D->end - D->p) < n) corrupt(D, "truncated");
}

static inline int get_byte(decoder *D) {
  need(D, 1);
  return *D->p++;
}

/*
** Reads an unsigned LEB128 varint of at most 10 bytes; without bounds
** checks per byte when 10 bytes are left (the common case).
*/
static uint64_t get_varint(decoder *D) {
  uint64_t v = 0;
  if (D->end - D->p >= 10) {  /* room for the longest: no bounds checks */
    const unsigned char *p = D->p;
    if (p[0] < 0x80) {
      D->p++;
      return p[0];
    }
    for (int shift = 0, i = 0; i < 10; shift += 7, i++) {
      v |= (uint64_t)(p[i] & 0x7f) << shift;
      if (p[i] < 0x80) {
        if (i == 9 && p[i] > 1) break;
        D->p += i + 1;
        return v;
      }
    }
    D->p += 9;
    corrupt(D, "varint overflows 64 bits");
  }
  for (int shift = 0;; shift += 7) {
    int c = get_byte(D);
    if (shift == 63 && c > 1) corrupt(D, "varint overflows 64 bits");
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return v;
  }
}

static uint64_t get_u32(decoder *D) {
  need(D, 4);
  uint64_t v = 0;
  for (int i = 0; i < 4; i++) v |= (uint64_t)D->p[i] << (8 * i);
  D->p += 4;
  return v;
}

/* Reads a varint length and returns that many bytes (not copied). */
static const char *get_lstring(decoder *D, size_t *n) {
  uint64_t len = get_varint(D);
  need(D, 0);
  if (len > (uint64_t)(D->end - D->p)) corrupt(D, "truncated");
  const char *s = (const char *)D->p;
  D->p += len;
  *n = (size_t)len;
  return s;
}

/*
** Promises `n` more values. Each takes at least one byte, so all promises
** together never exceed the bytes left: this bounds every allocation by
** the length of the input.
*/
static void promise(decoder *D, uint64_t n) {
  uint64_t left = (uint64_t)(D->end - D->p);
  if (n > left || D->pending > left - n) corrupt(D, "counts exceed the input");
  D->pending += (size_t)n;
}

/* Gives the value on top the next memo index. */
static void dmemo(decoder *D) {
  lua_pushvalue(D->L, -1);
  lua_rawseti(D->L, D->objs, ++D->nobjs);
}

/* Pushes a frame of `kind` for the container memoized last. */
static dframe *push_dframe(decoder *D, enum frame_kind kind) {
  dframe *f = frame_push(D->L, D->frames, sizeof *f);
  D->depth++;
  f->kind = kind;
  f->idx = D->nobjs;
  return f;
}

/* Pushes the types entry registered under a name read from the input. */
static void get_type(decoder *D) {
  lua_State *L = D->L;
  size_t n;
  const char *name = get_lstring(D, &n);
  if (lua_isnil(L, D->types)) {
    push_types(L);
    lua_replace(L, D->types);
  }
  lua_pushlstring(L, name, n);
  if (lua_rawget(L, D->types) != LUA_TTABLE)
    luaL_error(L, "cannot load type '%s': not registered with serialize.register",
               lua_pushlstring(L, name, n));
}

/* Refuses code unless loading it was allowed. */
static void need_functions(decoder *D) {
  if (!D->functions)
    luaL_error(D->L, "serialized data holds a function or the globals table; "
               "pass {functions = true} to load it (only from a trusted source)");
}

/* TBL or MTBL: makes the table (presized), memoizes it, pushes its frame. */
static void get_table(decoder *D, bool named) {
  lua_State *L = D->L;
  if (named) {
    get_type(D);
    if (lua_rawgeti(L, -1, TYPE_DUMP) != LUA_TNIL) corrupt(D, "userdata type used for a table");
    lua_pop(L, 1);
    lua_rawgeti(L, -1, TYPE_MT);
    lua_remove(L, -2);
  }
  uint64_t narr = get_u32(D), nhash = get_u32(D);
  promise(D, narr + 2 * nhash);
  lua_createtable(L, narr > INT32_MAX ? 0 : (int)narr,
                  nhash > INT32_MAX ? 0 : (int)nhash);
  if (named) {
    lua_insert(L, -2);
    lua_setmetatable(L, -2);
  }
  dmemo(D);
  dframe *f = push_dframe(D, F_TABLE);
  f->narr = narr;
  f->nhash = nhash;
}

/* lua_load's reader: hands over the whole bytecode at once. */
static const char *chunk_reader(lua_State *L, void *ud, size_t *n) {
  (void)L;
  const char **chunk = ud;
  const char *p = chunk[0];
  *n = (size_t)(chunk[1] - chunk[0]);
  chunk[0] = chunk[1];
  return *n ? p : NULL;
}

/*
** The prototype cache. Loading bytecode (lua_load) costs more than the
** rest of a small task's decoding, and the pools send the same function
** again and again; but a decoded closure must be a new one with fresh
** upvalues each time (a task may keep it, or change its upvalues), as
** lua_load gives. So the cache keeps, per bytecode string, a *maker*: a
** function loaded once from bytecode built here, whose only prototype is
** the function's own, made a closure over the maker's registers:
**
**   maker(): CLOSURE R[nups] <the function>; RETURN R[nups] (closing upvalues)
**
** Each call of the maker makes a new closure of the one prototype, each
** upvalue a new cell (open on the maker's register i, closed when it
** returns) holding nil, where lua_load would have put _ENV in the first:
** the decoder then sets every upvalue as it always does. The prototype
** itself is immutable, so sharing it is not visible.
*/

/* Reads a size of Lua's dump format (7-bit groups, the last one marked). */
static bool bc_size(const unsigned char **p, const unsigned char *end, size_t *out) {
  size_t x = 0;
  for (int i = 0; i < 10; i++) {
    if (*p >= end) return false;
    int b = *(*p)++;
    x = (x << 7) | (size_t)(b & 0x7f);
    if (b & 0x80) {
      *out = x;
      return true;
    }
  }
  return false;
}

/* Skips `n` bytes; false past the end. */
static bool bc_skip(const unsigned char **p, const unsigned char *end, size_t n) {
  if ((size_t)(end - *p) < n) return false;
  *p += n;
  return true;
}

#define BC_HEADER 31  /* signature, version, format, data, sizes, int, float */
#define BC_OP_RETURN 70
#define BC_OP_CLOSURE 79

/*
** Finds, in the bytecode [p, end) of a main function (as lua_dump writes
** it, which lua_load just accepted), where its upvalue descriptors begin;
** sets nups. Returns NULL for anything it does not recognise.
*/
static const unsigned char *bc_upvalues(const unsigned char *p, const unsigned char *end,
                                        size_t *nups) {
  size_t n, k;
  if (!bc_skip(&p, end, BC_HEADER + 1)) return NULL;
  if (!bc_size(&p, end, &n) || !bc_skip(&p, end, n ? n - 1 : 0)) return NULL;  /* source */
  if (!bc_size(&p, end, &n) || !bc_size(&p, end, &n) || !bc_skip(&p, end, 3)) return NULL;
  if (!bc_size(&p, end, &n) || n > SIZE_MAX / 4 || !bc_skip(&p, end, n * 4)) return NULL;
  if (!bc_size(&p, end, &k)) return NULL;  /* constants */
  for (size_t i = 0; i < k; i++) {
    if (p >= end) return NULL;
    switch (*p++) {
      case 0x00: case 0x01: case 0x11: break;                   /* nil, false, true */
      case 0x03: case 0x13: if (!bc_skip(&p, end, 8)) return NULL; break;  /* numbers */
      case 0x04: case 0x14:                                     /* strings */
        if (!bc_size(&p, end, &n) || !bc_skip(&p, end, n ? n - 1 : 0)) return NULL;
        break;
      default: return NULL;
    }
  }
  const unsigned char *at = p;
  if (!bc_size(&p, end, nups) || !bc_skip(&p, end, *nups * 3)) return NULL;
  return at;
}

/* Appends one instruction to the maker's bytecode in b. */
static void bc_instruction(lua_State *L, box *b, uint32_t i) {
  memcpy(box_room(L, b, 4), &i, 4);
  b->len += 4;
}

/* Appends bytes to b. */
static void bc_put(lua_State *L, box *b, const void *s, size_t n) {
  memcpy(box_room(L, b, n), s, n);
  b->len += n;
}

/*
** Pushes the maker of the function whose bytecode is [s, s + n), or
** nothing and returns false when the bytecode is not recognised or has
** too many upvalues for the maker's registers.
*/
static bool make_maker(lua_State *L, const char *s, size_t n) {
  const unsigned char *start = (const unsigned char *)s, *end = start + n;
  size_t nups;
  const unsigned char *ups = bc_upvalues(start, end, &nups);
  if (ups == NULL || nups != start[BC_HEADER] || nups > 250) return false;
  const unsigned char *after = ups;
  size_t skip;
  bc_size(&after, end, &skip);
  after += nups * 3;
  box *b = box_push(L);
  uint32_t a = (uint32_t)nups;
  unsigned char head[] = {
    0, 0x80, 0x80, 0x80,             /* no upvalues; no source; lines 0, 0 */
    (unsigned char)nups, 0, (unsigned char)(nups + 1 < 2 ? 2 : nups + 1),  /* params, vararg, stack */
    0x82                             /* 2 instructions */
  };
  bc_put(L, b, s, BC_HEADER);
  bc_put(L, b, head, sizeof head);
  bc_instruction(L, b, BC_OP_CLOSURE | a << 7);                       /* Bx = 0 */
  bc_instruction(L, b, BC_OP_RETURN | a << 7 | 1u << 15 | 2u << 16);  /* k, 1 result */
  bc_put(L, b, "\x80\x80\x81", 3);  /* no constants, no upvalues, one prototype */
  bc_put(L, b, s + BC_HEADER + 1, (size_t)(ups - start) - BC_HEADER - 1);
  /* the upvalue count as dumped, then each upvalue: on the maker's register i */
  bc_put(L, b, ups, (size_t)(after - ups) - nups * 3);
  for (size_t i = 0; i < nups; i++) {
    unsigned char uv[3] = {1, (unsigned char)i, 0};
    bc_put(L, b, uv, 3);
  }
  bc_put(L, b, after, (size_t)(end - after));
  bc_put(L, b, "\x80\x80\x80\x80", 4);  /* the maker's debug info: none */
  const char *chunk[2] = {b->p, b->p + b->len};
  bool ok = lua_load(L, chunk_reader, chunk, "=(serialized function)", "b") == LUA_OK;
  box_release(b, NULL);
  lua_remove(L, ok ? -2 : -1);  /* the box; the maker or the message */
  if (!ok) lua_pop(L, 1);
  return ok;
}

/*
** Pushes a new closure of the function whose bytecode is [s, s + n), from
** the prototype cache (PROTOS_KEY); false, with nothing pushed, when it is
** not there. The maker takes no arguments, so each upvalue starts nil.
*/
static bool load_cached(lua_State *L, const char *s, size_t n) {
  push_fcache(L, PROTOS_KEY, NULL, 0);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return false;
  }
  lua_pushlstring(L, s, n);
  if (lua_rawget(L, -2) != LUA_TFUNCTION) {
    lua_pop(L, 2);
    return false;
  }
  lua_call(L, 0, 1);
  lua_remove(L, -2);
  return true;
}

/* Keeps a maker of the function whose bytecode is [s, s + n) in the cache. */
static void keep_proto(lua_State *L, const char *s, size_t n) {
  if (n > FCACHE_MAX_BYTES || n <= BC_HEADER || !make_maker(L, s, n)) return;
  push_fcache(L, PROTOS_KEY, NULL, n);
  lua_pushlstring(L, s, n);
  lua_pushvalue(L, -3);
  fcache_add(L, n);
  lua_pop(L, 1);
}

/* LFN: loads the bytecode and pushes a frame for its upvalues, if any. */
static bool get_lfunction(decoder *D) {
  lua_State *L = D->L;
  need_functions(D);
  uint64_t n = get_u32(D);
  need(D, (size_t)n);
  if (!load_cached(L, (const char *)D->p, (size_t)n)) {
    const char *chunk[2] = {(const char *)D->p, (const char *)D->p + n};
    int status = lua_load(L, chunk_reader, chunk, "=(serialized function)", "b");
    if (status == LUA_ERRMEM) memory_error(L);
    if (status != LUA_OK)
      corrupt(D, lua_pushfstring(L, "bad function: %s", lua_tostring(L, -1)));
    keep_proto(L, (const char *)D->p, (size_t)n);
  }
  D->p += n;
  lua_Debug ar;
  lua_pushvalue(L, -1);
  lua_getinfo(L, ">u", &ar);
  promise(D, ar.nups);
  dmemo(D);
  if (ar.nups == 0) return false;
  push_dframe(D, F_FUNC)->nups = ar.nups;
  return true;
}

/* CFN: the C function at package.loaded[module][field] here. */
static void get_cfunction(decoder *D) {
  lua_State *L = D->L;
  need_functions(D);
  size_t nm, nf;
  const char *mod = get_lstring(D, &nm);
  const char *field = get_lstring(D, &nf);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushlstring(L, mod, nm);
  if (lua_rawget(L, -2) == LUA_TTABLE) {
    lua_pushlstring(L, field, nf);
    lua_rawget(L, -2);
  }
  if (!lua_isfunction(L, -1))
    luaL_error(L, "cannot load C function %s.%s: not found in package.loaded",
               lua_pushlstring(L, mod, nm), lua_pushlstring(L, field, nf));
  lua_replace(L, -3);
  lua_pop(L, 1);
  dmemo(D);
}

/* UDATA: calls the load function registered for the type on the bytes. */
static void get_userdata(decoder *D) {
  lua_State *L = D->L;
  lua_Integer idx = ++D->nobjs;  /* taken now, as the encoder did */
  get_type(D);
  if (lua_rawgeti(L, -1, TYPE_LOAD) != LUA_TFUNCTION) corrupt(D, "table type used for a userdata");
  size_t n;
  const char *s = get_lstring(D, &n);
  lua_pushlstring(L, s, n);
  int status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_ERRMEM) memory_error(L);
  if (status != LUA_OK) {
    const char *why = host_error_tostring(L);  /* any value: run protected */
    lua_rawgeti(L, -2, TYPE_NAME);
    luaL_error(L, "cannot load %s: %s", lua_tostring(L, -1), why);
  }
  lua_remove(L, -2);
  lua_pushvalue(L, -1);
  lua_rawseti(L, D->objs, idx);
}

/*
** Reads one value and pushes it. Returns true when it is a container with
** contents to come: its frame is pushed, and the caller places the value
** and then descends into it.
*/
static bool get_value(decoder *D) {
  lua_State *L = D->L;
  D->pending--;
  int tag = get_byte(D);
  switch (tag) {
    case T_NIL: lua_pushnil(L); return false;
    case T_FALSE: lua_pushboolean(L, 0); return false;
    case T_TRUE: lua_pushboolean(L, 1); return false;
    case T_INT: {
      uint64_t z = get_varint(D);
      lua_pushinteger(L, (lua_Integer)((z >> 1) ^ (0 - (z & 1))));
      return false;
    }
    case T_FLT: {
      need(D, 8);
      uint64_t u = 0;
      for (int i = 0; i < 8; i++) u |= (uint64_t)D->p[i] << (8 * i);
      D->p += 8;
      double d;
      memcpy(&d, &u, sizeof d);
      lua_pushnumber(L, (lua_Number)d);
      return false;
    }
    case T_STR: case T_MSTR: {
      size_t n;
      const char *s = get_lstring(D, &n);
      lua_pushlstring(L, s, n);
      if (tag == T_MSTR) dmemo(D);
      return false;
    }
    case T_REF: {
      uint64_t i = get_varint(D);
      if (i < 1 || i > (uint64_t)D->nobjs) corrupt(D, "reference to an unknown object");
      lua_rawgeti(L, D->objs, (lua_Integer)i);
      return false;
    }
    case T_TBL: case T_MTBL:
      get_table(D, tag == T_MTBL);
      return true;
    case T_GLOB:
      need_functions(D);
      lua_pushglobaltable(L);
      return false;
    case T_LFN:
      return get_lfunction(D);
    case T_CFN:
      get_cfunction(D);
      return false;
    case T_UDATA:
      get_userdata(D);
      return false;
    default:
      D->p--;
      corrupt(D, "unknown tag");
      return false;
  }
}

/* Makes the container on top (its frame just pushed) T; K is cleared. */
static void ddescend(decoder *D) {
  walk_into(D->L, D->t);
}

/* Ends the frame on top; the parent is filled again (with its key). */
static void dascend(decoder *D) {
  lua_State *L = D->L;
  D->depth--;
  D->frames->len -= sizeof(dframe);
  if (D->depth == 0) return;
  const dframe *f = dframe_at(D, D->depth - 1);
  walk_back(L, D->t, D->objs, f->idx);
  if (f->kind == F_TABLE && f->value_next) lua_rawgeti(L, D->objs, f->keyidx);
  else lua_pushnil(L);
}

/* JOIN in upvalue i of the function in T: shares an earlier upvalue. */
static void get_join(decoder *D, int i) {
  lua_State *L = D->L;
  D->pending--;
  D->p++;
  uint64_t at = get_varint(D);
  int n = get_byte(D);
  if (at < 1 || at > (uint64_t)D->nobjs) corrupt(D, "join to an unknown function");
  lua_rawgeti(L, D->objs, (lua_Integer)at);
  if (!lua_isfunction(L, -1) || lua_iscfunction(L, -1) ||
      lua_getupvalue(L, -1, n) == NULL)
    corrupt(D, "join to a missing upvalue");
  lua_pop(L, 1);
  lua_upvaluejoin(L, D->t, i, -1, n);
  lua_pop(L, 1);
}

/*
** Fails on a key that no table can hold (nil or NaN), looking only at the
** tags that can give one: the value is checked after get_value read it.
*/
static void check_key(decoder *D, int tag) {
  lua_State *L = D->L;
  if (tag != T_NIL && tag != T_FLT && tag != T_REF && tag != T_UDATA) return;
  if (lua_isnil(L, -1)) corrupt(D, "nil table key");
  if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
    lua_Number x = lua_tonumber(L, -1);
    if (x != x) corrupt(D, "NaN table key");
  }
}

/*
** Fills the container on top and everything inside it, frame by frame,
** until the frame stack is empty again. A new container is placed in its
** parent as soon as it is made, so cycles through it resolve.
*/
static void decode_graph(decoder *D) {
  lua_State *L = D->L;
  int t = D->t;
  ddescend(D);
  while (D->depth > 0) {
    size_t d = D->depth - 1;
    dframe *f = dframe_at(D, d);
    if (f->kind == F_FUNC) {
      if (f->up == f->nups) {
        dascend(D);
        continue;
      }
      int i = ++f->up;
      if (D->p < D->end && *D->p == T_JOIN) {
        get_join(D, i);
        continue;
      }
      if (get_value(D)) {
        lua_pushvalue(L, -1);
        lua_setupvalue(L, t, i);
        ddescend(D);
      } else {
        lua_setupvalue(L, t, i);
      }
      continue;
    }
    if (f->i < f->narr) {  /* the array section: leaves in a tight loop */
      lua_Integer i = (lua_Integer)++f->i;
      if (get_value(D)) {
        lua_pushvalue(L, -1);
        lua_rawseti(L, t, i);
        ddescend(D);
        continue;
      }
      lua_rawseti(L, t, i);
      continue;
    }
    if (f->value_next) {
      f->value_next = false;
      f->j++;
      bool deeper = get_value(D);
      lua_pushvalue(L, t + 1);
      lua_pushvalue(L, -2);
      lua_rawset(L, t);
      if (deeper) ddescend(D);
      else lua_settop(L, t + 1);
      continue;
    }
    if (f->j == f->nhash) {
      dascend(D);
      continue;
    }
    int tag = D->p < D->end ? *D->p : T_NIL;
    if (get_value(D)) {  /* a key with contents: fill it, then its value */
      lua_copy(L, -1, t + 1);
      f = dframe_at(D, d);
      f->value_next = true;
      f->keyidx = D->nobjs;
      ddescend(D);
      continue;
    }
    check_key(D, tag);
    f->j++;
    if (get_value(D)) {  /* stack: T K key value */
      lua_pushvalue(L, -2);
      lua_pushvalue(L, -2);
      lua_rawset(L, t);
      ddescend(D);
      continue;
    }
    lua_rawset(L, t);
  }
}

/*
** Decodes a payload and pushes its values; returns how many. Raises on
** anything but a well-formed payload of this format version.
*/
static int decode_values(lua_State *L, const char *s, size_t len, bool functions) {
  decoder D = {.L = L, .functions = functions};
  D.start = D.p = (const unsigned char *)s;
  D.end = D.p + len;
  if (len < 2 || s[0] != 'H' || s[1] != 'S')
    return luaL_error(L, "not serialized data (no 'HS' header)");
  D.p += 2;
  int version = get_byte(&D);
  if (version != FORMAT_VERSION)
    return luaL_error(L, "serialized data has format version %d; this host reads %d",
                      version, FORMAT_VERSION);
  uint64_t n = get_varint(&D);
  promise(&D, n);
  if (n > INT_MAX / 2) luaL_error(L, "too many values to decode");
  /* lua_checkstack does not say why it fails: room for up to half a
     stack's limit is memory that ran out (only a caller whose own frames
     nearly fill the stack could make it the limit) */
  if (!lua_checkstack(L, (int)n + 24)) {
    if (n + 24 <= LUAI_MAXSTACK / 2) memory_error(L);
    luaL_error(L, "stack overflow (too many values to decode)");
  }
  int base = lua_gettop(L);
  lua_settop(L, base + (int)n);
  scratch *w = scratch_take(L);
  int widx = lua_gettop(L);
  D.frames = &w->frames;
  lua_newtable(L);
  D.objs = lua_gettop(L);
  lua_pushnil(L);
  D.types = lua_gettop(L);
  D.t = D.types + 1;
  for (int i = 1; i <= (int)n; i++) {
    bool deeper = get_value(&D);
    lua_copy(L, -1, base + i);
    if (deeper) decode_graph(&D);
    lua_settop(L, D.t - 1);
  }
  if (D.p != D.end) corrupt(&D, "trailing bytes");
  scratch_give(L, widx, w);
  lua_settop(L, base + (int)n);
  return (int)n;
}

/* ---- Lua functions ---- */

/* serialize.dumps(...): one string holding every argument, nils included. */
static int serialize_dumps(lua_State *L) {
  int n = lua_gettop(L);
  scratch *w = encode_values(L, 1, n, NULL);
  lua_pushlstring(L, w->out.p, w->out.len);
  scratch_give(L, n + 1, w);
  return 1;
}

/*
** serialize.loads(s [, opts]): the values `s` holds. Refuses functions
** (and the globals table) unless opts.functions is true.
*/
static int serialize_loads(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  bool functions = false;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    static const char *const known[] = {"functions", NULL};
    host_check_options(L, 2, known);
    lua_getfield(L, 2, "functions");
    functions = lua_toboolean(L, -1);
  }
  lua_settop(L, 2);
  return decode_values(L, s, len, functions);
}

/*
** serialize.register(name, mt): tables with metatable `mt` travel under
** `name`; loads sets the metatable registered under that name here.
*/
static int serialize_register(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  push_types(L);
  add_type(L, 3, name, 2, NULL, NULL);
  lua_settop(L, 2);
  return 1;
}

static const luaL_Reg serialize_funcs[] = {
  {"dumps", serialize_dumps},
  {"loads", serialize_loads},
  {"register", serialize_register},
  {NULL, NULL}
};

int luaopen_host_serialize(lua_State *L) {
  luaL_newlib(L, serialize_funcs);
  lua_pushinteger(L, FORMAT_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}

/* ---- the C API (host.h) ---- */

typedef struct encode_call {
  int n;
  char *buf;
  size_t len;
  int *where;
} encode_call;

/* Protected body of host_codec_encode: hands the payload's memory over. */
static int encode_call_body(lua_State *L) {
  encode_call *c = lua_touserdata(L, 1);
  scratch *w = encode_values(L, 2, c->n, c->where);
  c->len = w->out.len;
  box_release(&w->out, &c->buf);
  scratch_give(L, lua_gettop(L), w);
  return 0;
}

int host_codec_encode_at(lua_State *L, int first, int n, char **buf, size_t *len,
                         int *where) {
  encode_call c = {.n = n, .where = where};
  if (where != NULL) *where = 0;
  *buf = NULL;
  *len = 0;
  if (n < 0) {
    lua_pushliteral(L, "host_codec_encode: negative count of values");
    return LUA_ERRRUN;
  }
  first = lua_absindex(L, first);
  if (n > INT_MAX - 2 || !lua_checkstack(L, n + 2)) {
    lua_pushliteral(L, "stack overflow (too many values to encode)");
    return LUA_ERRMEM;
  }
  lua_pushcfunction(L, encode_call_body);
  lua_pushlightuserdata(L, &c);
  for (int i = 0; i < n; i++) lua_pushvalue(L, first + i);
  /* No message handler: the message names the value, a traceback of the
     codec's own C frames would add nothing. */
  int status = lua_pcall(L, n + 1, 0, 0);
  if (status == LUA_OK) {
    *buf = c.buf;
    *len = c.len;
  }
  return status;
}

int host_codec_encode(lua_State *L, int first, int n, char **buf, size_t *len) {
  return host_codec_encode_at(L, first, n, buf, len, NULL);
}

typedef struct decode_call {
  const char *buf;
  size_t len;
  unsigned flags;
} decode_call;

/* Protected body of host_codec_decode. */
static int decode_call_body(lua_State *L) {
  decode_call *c = lua_touserdata(L, 1);
  lua_settop(L, 0);
  return decode_values(L, c->buf, c->len, c->flags & HOST_CODEC_FUNCTIONS);
}

int host_codec_decode(lua_State *L, const char *buf, size_t len, unsigned flags,
                      int *n) {
  decode_call c = {buf, len, flags};
  int base = lua_gettop(L);
  *n = 0;
  if (!lua_checkstack(L, 2)) {
    /* Lua's preallocated message: pushing it allocates nothing, so it
       cannot raise; its slot is the one any push may take for granted */
    lua_pushliteral(L, "not enough memory");
    return LUA_ERRMEM;
  }
  lua_pushcfunction(L, decode_call_body);
  lua_pushlightuserdata(L, &c);
  int status = lua_pcall(L, 1, LUA_MULTRET, 0);
  if (status == LUA_OK) *n = lua_gettop(L) - base;
  return status;
}

/* Protected body of host_codec_register_udata. */
static int register_call_body(lua_State *L) {
  const char *tname = lua_touserdata(L, 1);
  lua_CFunction *fns = lua_touserdata(L, 2);
  if (fns[0] == NULL || fns[1] == NULL)
    return luaL_error(L, "serialize: type '%s' needs both a dump and a load function",
                      tname);
  if (luaL_getmetatable(L, tname) != LUA_TTABLE)
    return luaL_error(L, "serialize: no metatable '%s' (make it with luaL_newmetatable)",
                      tname);
  push_types(L);
  add_type(L, -1, tname, -2, fns[0], fns[1]);
  return 0;
}

int host_codec_register_udata(lua_State *L, const char *tname,
                              lua_CFunction dump, lua_CFunction load) {
  lua_CFunction fns[2] = {dump, load};
  lua_pushcfunction(L, register_call_body);
  lua_pushlightuserdata(L, (void *)tname);
  lua_pushlightuserdata(L, fns);
  return lua_pcall(L, 2, 0, 0);
}

-- Conversation and contact search that keeps using indexes under Row Level Security.
--
-- Under RLS the planner turns a query condition into an index condition only when its operator
-- is LEAKPROOF (otherwise it could run on another tenant's rows before the policy filters them
-- out). jsonb `@>`, `ILIKE`/`LIKE`, pg_trgm's `%` and full-text `@@` are not leakproof, so GIN
-- and trigram indexes serve none of them for the app role, not even as btree_gin composites
-- that lead with tenant_id. Text comparison (`=`, `<`, `>=`) is leakproof, so search is made of
-- btree equalities and ranges on precomputed terms:
--
--   - the words of the searchable fields, lowercased and cut at white space and punctuation, one
--     row each; a query word `w` matches the terms in [w, w || U+10FFFF) under collation "C",
--     which are exactly the words starting with `w` (word-prefix search);
--   - a phone number's digits, and '#' followed by them reversed, so that a query made of digits
--     matches the start or the end of a number (its words count as well);
--   - per scalar custom attribute, the jsonb text of the pair ({"plan": "gold"}), so that
--     equality of terms is containment of attributes.
--
-- Statement-level triggers keep the terms; they run as the caller (SECURITY INVOKER), so RLS
-- checks every term row they write. See docs/guides/search-under-rls.md.

-- The words of a text, lowercased, split at white space and punctuation, at most 64 characters
-- each. U+10FFFF is a separator so that a term can never contain the range's upper bound.
create function search_words(document text) returns setof text
  language sql immutable strict parallel safe rows 8
  as $$
    select distinct left(word, 64)
      from regexp_split_to_table(lower(document), '[[:space:][:punct:]' || U&'\+10FFFF' || ']+') as word
     where word <> ''
  $$;

-- The search key of one query word (the client has already split the query at anything that is
-- not a letter, mark or digit): the same normalization as search_words().
create function search_key(word text) returns text
  language sql immutable strict parallel safe
  as $$ select left(lower(word), 64) $$;

-- The exclusive upper bound of the terms that start with `key`, under collation "C".
create function search_key_end(key text) returns text
  language sql immutable strict parallel safe
  as $$ select key || U&'\+10FFFF' $$;

-- The terms of a phone number: its digits, and '#' followed by its digits reversed (the range of
-- a reversed query then finds the numbers that end with the query, with or without the country
-- code). '#' is punctuation, so no word term starts with it.
create function search_phone_terms(phone text) returns setof text
  language sql immutable strict parallel safe rows 2
  as $$
    select term
      from (select left(regexp_replace(phone, '[^0-9]', '', 'g'), 32) as digits) d,
           lateral (values (d.digits), ('#' || reverse(d.digits))) as t(term)
     where d.digits <> ''
  $$;

-- The search key that finds phone numbers ending with a query word made of digits, or null.
create function search_phone_key(word text) returns text
  language sql immutable strict parallel safe
  as $$ select case when word ~ '^[0-9]{1,32}$' then '#' || reverse(word) end $$;

-- A term that fits a btree entry: a text longer than 200 characters keeps its first 180 and a
-- 64-bit hash of the whole (hashtextextended() is stable across versions: hash partitioning
-- depends on it).
create function search_term_fit(term text) returns text
  language sql immutable strict parallel safe
  as $$
    select case when length(term) <= 200 then term
                else left(term, 180) || '#' || to_hex(hashtextextended(term, 0)) end
  $$;

-- The term of one custom attribute: the jsonb text of {key: value}, numbers scaled down (5.0
-- and 5 are equal under `@>`). For a scalar value, having the term is being contained:
-- `attributes @> '{"plan": "gold"}'` exactly when the contact has the term {"plan": "gold"}.
create function search_attribute_term(key text, value jsonb) returns text
  language sql immutable strict parallel safe
  as $$
    select search_term_fit(jsonb_set('{}'::jsonb, array[key],
      case when jsonb_typeof(value) = 'number' then trim_scale(value::numeric)::text::jsonb
           else value end)::text)
  $$;

-- The terms of every scalar attribute of an attributes object.
create function search_attribute_terms(attributes jsonb) returns setof text
  language sql immutable strict parallel safe rows 8
  as $$
    select search_attribute_term(a.key, a.value)
      from jsonb_each(case when jsonb_typeof(attributes) = 'object' then attributes else '{}' end) as a
     where jsonb_typeof(a.value) in ('string', 'number', 'boolean')
  $$;

-- The free-text terms of a contact: the words of its name, email and phone (so that a number
-- typed as it is written, "555-123-4567", matches word by word) and the phone's digit terms.
create function contact_text_terms(name text, email text, phone text) returns setof text
  language sql immutable parallel safe rows 12
  as $$
    select search_words(name)
    union select search_words(email)
    union select search_words(phone)
    union select search_phone_terms(phone)
  $$;

-- The word terms of each contact (name, email, phone). Created bare: the triggers come next
-- (CREATE TRIGGER locks contacts and conversations against writes until this migration
-- commits), then the terms of the rows that exist, then the keys and indexes, faster to build
-- once than to maintain row by row during the backfill.
create table contact_search_terms (
  tenant_id uuid not null,
  contact_id uuid not null,
  term text collate "C" not null
);

-- The attribute terms of each contact. A table of its own because its lookups are equalities:
-- its term index keeps the contact id as a key column (a probe for one contact is one descent),
-- where the word indexes must not (see the indexes at the end).
create table contact_attribute_terms (
  tenant_id uuid not null,
  contact_id uuid not null,
  term text collate "C" not null
);

-- The word terms of each conversation: its subject's and its contact's, so that each query word
-- is one index range whichever field it matches.
create table conversation_search_terms (
  tenant_id uuid not null,
  conversation_id uuid not null,
  term text collate "C" not null
);

-- Brings the terms of the given contacts up to date: deletes the stale ones, inserts the missing
-- ones, leaves the rest (an attribute change rewrites one row, not twenty). Rows are named by
-- (tenant_id, id) pairs so that every lookup uses a primary key, with or without RLS.
create function refresh_contact_search_terms(tenant_ids uuid[], contact_ids uuid[])
  returns void
  language sql volatile
  as $$
    with keys as (
      select distinct k.tenant_id, k.id from unnest(tenant_ids, contact_ids) as k(tenant_id, id)
    ), wanted as (
      select c.tenant_id, c.id as contact_id, t.term
        from keys
        join contacts c on c.tenant_id = keys.tenant_id and c.id = keys.id
        cross join lateral contact_text_terms(c.name, c.email, c.phone) as t(term)
    ), removed as (
      delete from contact_search_terms s
       using keys
       where s.tenant_id = keys.tenant_id and s.contact_id = keys.id
         and not exists (
           select 1 from wanted w
            where w.tenant_id = s.tenant_id and w.contact_id = s.contact_id and w.term = s.term)
    )
    insert into contact_search_terms (tenant_id, contact_id, term)
    select tenant_id, contact_id, term from wanted
    on conflict do nothing;

    with keys as (
      select distinct k.tenant_id, k.id from unnest(tenant_ids, contact_ids) as k(tenant_id, id)
    ), wanted as (
      select c.tenant_id, c.id as contact_id, t.term
        from keys
        join contacts c on c.tenant_id = keys.tenant_id and c.id = keys.id
        cross join lateral search_attribute_terms(c.attributes) as t(term)
    ), removed as (
      delete from contact_attribute_terms s
       using keys
       where s.tenant_id = keys.tenant_id and s.contact_id = keys.id
         and not exists (
           select 1 from wanted w
            where w.tenant_id = s.tenant_id and w.contact_id = s.contact_id and w.term = s.term)
    )
    insert into contact_attribute_terms (tenant_id, contact_id, term)
    select tenant_id, contact_id, term from wanted
    on conflict do nothing;
  $$;

-- The same for conversations. Their contacts are locked FOR SHARE first, in a statement of its
-- own: a concurrent change of the contact's name, email or phone then either commits before
-- (and the next statement sees it) or waits until this transaction commits (and its own refresh
-- sees this conversation's new subject), so the terms never keep a stale mix of the two.
create function refresh_conversation_search_terms(tenant_ids uuid[], conversation_ids uuid[])
  returns void
  language plpgsql volatile
  as $fn$
begin
  perform 1
     from conversations v
     join contacts c on c.tenant_id = v.tenant_id and c.id = v.contact_id
    where (v.tenant_id, v.id) in (select * from unnest(tenant_ids, conversation_ids))
    order by c.tenant_id, c.id
      for share of c;
  with keys as (
    select distinct k.tenant_id, k.id from unnest(tenant_ids, conversation_ids) as k(tenant_id, id)
  ), wanted as (
    select v.tenant_id, v.id as conversation_id, t.term
      from keys
      join conversations v on v.tenant_id = keys.tenant_id and v.id = keys.id
      join contacts c on c.tenant_id = v.tenant_id and c.id = v.contact_id
      cross join lateral (
        select search_words(v.subject)
        union select contact_text_terms(c.name, c.email, c.phone)
      ) as t(term)
  ), removed as (
    delete from conversation_search_terms s
     using keys
     where s.tenant_id = keys.tenant_id and s.conversation_id = keys.id
       and not exists (
         select 1 from wanted w
          where w.tenant_id = s.tenant_id and w.conversation_id = s.conversation_id
            and w.term = s.term)
  )
  insert into conversation_search_terms (tenant_id, conversation_id, term)
  select tenant_id, conversation_id, term from wanted
  on conflict do nothing;
end
$fn$;

create function contacts_search_terms_trigger() returns trigger
  language plpgsql volatile
  as $fn$
declare
  tenant_ids uuid[];
  contact_ids uuid[];
  conversation_ids uuid[];
begin
  if tg_op = 'INSERT' then
    select array_agg(n.tenant_id), array_agg(n.id) into tenant_ids, contact_ids from new_rows n;
    if contact_ids is not null then
      perform refresh_contact_search_terms(tenant_ids, contact_ids);
    end if;
    return null;
  end if;

  select array_agg(n.tenant_id), array_agg(n.id) into tenant_ids, contact_ids
    from new_rows n join old_rows o on o.tenant_id = n.tenant_id and o.id = n.id
   where (n.name, n.email, n.phone, n.attributes)
         is distinct from (o.name, o.email, o.phone, o.attributes);
  if contact_ids is not null then
    perform refresh_contact_search_terms(tenant_ids, contact_ids);
  end if;

  select array_agg(v.tenant_id), array_agg(v.id) into tenant_ids, conversation_ids
    from new_rows n
    join old_rows o on o.tenant_id = n.tenant_id and o.id = n.id
    join conversations v on v.tenant_id = n.tenant_id and v.contact_id = n.id
   where (n.name, n.email, n.phone) is distinct from (o.name, o.email, o.phone);
  if conversation_ids is not null then
    perform refresh_conversation_search_terms(tenant_ids, conversation_ids);
  end if;
  return null;
end
$fn$;

create trigger contacts_search_terms_insert after insert on contacts
  referencing new table as new_rows
  for each statement execute function contacts_search_terms_trigger();
create trigger contacts_search_terms_update after update on contacts
  referencing old table as old_rows new table as new_rows
  for each statement execute function contacts_search_terms_trigger();

create function conversations_search_terms_inserted() returns trigger
  language plpgsql volatile
  as $fn$
declare
  tenant_ids uuid[];
  conversation_ids uuid[];
begin
  select array_agg(n.tenant_id), array_agg(n.id) into tenant_ids, conversation_ids
    from new_rows n;
  if conversation_ids is not null then
    perform refresh_conversation_search_terms(tenant_ids, conversation_ids);
  end if;
  return null;
end
$fn$;

create trigger conversations_search_terms_insert after insert on conversations
  referencing new table as new_rows
  for each statement execute function conversations_search_terms_inserted();

-- Conversations are updated on every message (updated_at, last_message_at, status), their
-- subject and contact rarely: a row trigger whose WHEN clause is false costs those updates
-- nothing, where a statement trigger would capture transition tables for each of them.
create function conversations_search_terms_updated() returns trigger
  language plpgsql volatile
  as $fn$
begin
  -- Moved to another contact: the former contact is locked too, or a rename of that contact
  -- running concurrently could write its old terms back.
  if new.contact_id <> old.contact_id then
    perform 1 from contacts c where c.tenant_id = old.tenant_id and c.id = old.contact_id
      for share;
  end if;
  perform refresh_conversation_search_terms(array[new.tenant_id], array[new.id]);
  return null;
end
$fn$;

create trigger conversations_search_terms_update after update of subject, contact_id
  on conversations
  for each row
  when (old.subject is distinct from new.subject or old.contact_id <> new.contact_id)
  execute function conversations_search_terms_updated();

-- Terms for the rows that exist already (the migration runs as the owner, which bypasses RLS).
insert into contact_search_terms (tenant_id, contact_id, term)
select c.tenant_id, c.id, t.term
  from contacts c cross join lateral contact_text_terms(c.name, c.email, c.phone) as t(term);

insert into contact_attribute_terms (tenant_id, contact_id, term)
select c.tenant_id, c.id, t.term
  from contacts c cross join lateral search_attribute_terms(c.attributes) as t(term);

insert into conversation_search_terms (tenant_id, conversation_id, term)
select v.tenant_id, v.id, t.term
  from conversations v
  join contacts c on c.tenant_id = v.tenant_id and c.id = v.contact_id
  cross join lateral (
    select search_words(v.subject)
    union select contact_text_terms(c.name, c.email, c.phone)
  ) as t(term);

-- The primary keys lead with the owner id: they serve the triggers' refreshes and the searches'
-- probes (does this conversation have a term in this range?). The word indexes carry the owner
-- id as an INCLUDE column, not a key: with a key column after a range, the planner may probe one
-- conversation through the term index, reading every entry of the range (each "garcia12" of an
-- email), instead of using the primary key.
alter table contact_search_terms
  add primary key (tenant_id, contact_id, term),
  add foreign key (tenant_id, contact_id) references contacts (tenant_id, id) on delete cascade;
create index contact_search_terms_term_idx
  on contact_search_terms (tenant_id, term) include (contact_id);
select tenantry.enable_tenant_isolation('contact_search_terms');

alter table contact_attribute_terms
  add primary key (tenant_id, contact_id, term),
  add foreign key (tenant_id, contact_id) references contacts (tenant_id, id) on delete cascade;
create index contact_attribute_terms_term_idx
  on contact_attribute_terms (tenant_id, term, contact_id);
select tenantry.enable_tenant_isolation('contact_attribute_terms');

alter table conversation_search_terms
  add primary key (tenant_id, conversation_id, term),
  add foreign key (tenant_id, conversation_id) references conversations (tenant_id, id)
    on delete cascade;
create index conversation_search_terms_term_idx
  on conversation_search_terms (tenant_id, term) include (conversation_id);
select tenantry.enable_tenant_isolation('conversation_search_terms');

-- Search results are ordered newest first with (updated_at, id) as the cursor.
create index contacts_tenant_id_updated_at_idx on contacts (tenant_id, updated_at, id);

-- pandoc Lua filter for the man pages (docs/man/*.md -> roff). It keeps one
-- source for what docs/ already says: a div
--   ::: {include="../bsopts.md"} :::                 (the file, without its title)
--   ::: {include="../blockd.md" section="configuration"} :::
--                                          (one section, by identifier or title)
--   ... no-subsections="1"                 (stop at the section's first subheading)
-- is replaced by that Markdown, its headings moved under the page's current
-- section. And it makes the rest man-shaped: links become their text (a
-- terminal cannot follow them), inline code becomes bold (the man convention
-- for literal text) and bold text's dashes minus signs, and tables become tagged paragraphs (a table with long
-- cells is unreadable in 80 columns).

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local source_dir = dirname(PANDOC_STATE.input_files[1] or "./x")

local function read_markdown(path)
  local f = io.open(path, "r")
  if not f then error("man.lua: cannot read included file " .. path) end
  local text = f:read("a")
  f:close()
  return pandoc.read(text, "markdown").blocks
end

-- The blocks of one section (its heading dropped), or of the whole file
-- without its level-1 title.
local function pick(blocks, section, no_sub, path)
  local out, inside, level = {}, section == nil, 1
  for _, b in ipairs(blocks) do
    if b.t == "Header" then
      if section == nil and b.level == 1 then
        goto continue
      end
      if inside and section ~= nil and (b.level <= level or no_sub) then
        break
      end
      if not inside and (b.identifier == section or pandoc.utils.stringify(b.content) == section) then
        inside, level = true, b.level
        goto continue
      end
    end
    if inside then table.insert(out, b) end
    ::continue::
  end
  if #out == 0 then error("man.lua: " .. path .. ": no section '" .. tostring(section) .. "'") end
  return out, (section == nil) and 1 or level
end

local current_level = 1

local function include(div)
  local rel = div.attributes["include"]
  if not rel then return nil end
  local path = source_dir .. "/" .. rel
  local blocks, top = pick(read_markdown(path), div.attributes["section"],
                           div.attributes["no-subsections"] ~= nil, path)
  -- The included file's headings go one level below the page's section.
  local shift = current_level + 1 - (top + 1)
  for i, b in ipairs(blocks) do
    if b.t == "Header" then
      b.level = math.max(2, b.level + shift)
      blocks[i] = b
    end
  end
  return blocks
end

local function table_to_tags(tbl)
  local simple = pandoc.utils.to_simple_table(tbl)
  local headers = {}
  for i, h in ipairs(simple.headers) do headers[i] = pandoc.utils.stringify(h) end
  local items = {}
  for _, row in ipairs(simple.rows) do
    local term = pandoc.utils.blocks_to_inlines(row[1])
    local defs = {}
    for i = 2, #row do
      local text = pandoc.utils.blocks_to_inlines(row[i])
      if #text > 0 then
        if i < #row and headers[i] ~= "" then
          local para = { pandoc.Emph(pandoc.Str(headers[i] .. ":")), pandoc.Space() }
          for _, x in ipairs(text) do table.insert(para, x) end
          table.insert(defs, pandoc.Para(para))
        else
          table.insert(defs, pandoc.Para(text))
        end
      end
    end
    table.insert(items, { term, { defs } })
  end
  -- .PP without space first: the tags start at the section's indent even
  -- right after a bullet list (whose indent .TP would otherwise keep).
  return { pandoc.RawBlock("man", ".PD 0\n.PP\n.PD"), pandoc.DefinitionList(items) }
end

-- Literal text (options, commands, values): "-" as roff's \- , the ASCII
-- minus a reader can copy, not the hyphen groff may print for "-".
local function literal(text)
  local out = {}
  for piece, dash in text:gmatch("([^-]*)(%-?)") do
    if piece ~= "" then table.insert(out, pandoc.Str(piece)) end
    if dash ~= "" then table.insert(out, pandoc.RawInline("man", "\\-")) end
  end
  return out
end

local function strong_literal(s)
  local content = pandoc.walk_inline(pandoc.Span(s.content), {
    Str = function(x) return literal(x.text) end,
  }).content
  return pandoc.Strong(content)
end

return {
  {
    -- Walk in document order so that an include knows the section it is in.
    traverse = "topdown",
    Header = function(h) current_level = h.level end,
    Div = include,
  },
  {
    Link = function(l) return l.content end,
    Code = function(c) return pandoc.Strong(literal(c.text)) end,
    Strong = strong_literal,
    Table = table_to_tags,
  },
}
